/* A heatmap taller than its box opens where the prediction is (its last token, .tok.pos), not at the system
   prompt. Opened there, the start of the context is out of sight with nothing saying so: a line above the box
   counts the tokens before the first one in sight and, clicked, scrolls to the start. Used by the report and the
   explorer alike (the explorer serves this file from the report's assets). */
function ftOpenAtPrediction(strip) {
  var pos = strip && strip.querySelector(".tok.pos");
  if (!pos) return null;
  var below = pos.getBoundingClientRect().bottom - strip.getBoundingClientRect().bottom + 40;
  if (below > 0) strip.scrollTop += below;  // (the 40 px of room can ask for a scroll a box that fits ignores)
  if (strip.scrollTop === 0) return null;
  var hint = document.createElement("button");
  hint.type = "button"; hint.className = "above";
  // the tokens before the first one not wholly above the box's visible top: "earlier" in document order, folded
  // ones included. Tokens are laid out in document order, so their bottoms never decrease: a binary search reads
  // log2(n) positions per frame, not all n (12,000 rects took a whole frame). A token in a folded segment has no
  // box of its own; its folded segment's summary stands for it.
  var toks = strip.querySelectorAll(".tok");
  function bottom(t) {
    var r = t.getBoundingClientRect(), shut = r.height ? null : t.closest("details:not([open])");
    return shut ? shut.getBoundingClientRect().bottom : r.bottom;
  }
  function above() {
    var top = strip.getBoundingClientRect().top, lo = 0, hi = toks.length;
    while (lo < hi) {
      var mid = (lo + hi) >> 1;
      if (bottom(toks[mid]) <= top) lo = mid + 1; else hi = mid;
    }
    return lo;
  }
  var queued = false;
  function say() {
    queued = false;
    var n = strip.scrollTop > 0 ? above() : 0;
    hint.textContent = "\u2191 " + n + " earlier token" + (n === 1 ? "" : "s") + " above: show the start";
    // hidden by visibility, not display: the box does not move under the reader's wheel when the line goes
    hint.classList.toggle("gone", n === 0);
    hint.tabIndex = n === 0 ? -1 : 0;
  }
  strip.addEventListener("scroll", function () { if (!queued) { queued = true; requestAnimationFrame(say); } });
  hint.addEventListener("click", function () { strip.scrollTop = 0; say(); });
  strip.parentNode.insertBefore(hint, strip);
  say();
  hint.recount = say;  // what a scroll runs once per frame (perf/bench_strip.py times it)
  return hint;
}
