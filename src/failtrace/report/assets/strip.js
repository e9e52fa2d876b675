/* A heatmap taller than its box opens where the prediction is (its last token, .tok.pos), not at the system
   prompt. Opened there, the start of the context is out of sight with nothing saying so: a line above the box counts
   the tokens above the visible part and, clicked, scrolls to the start. Used by the report and the explorer alike
   (the explorer serves this file from the report's assets). */
function ftOpenAtPrediction(strip) {
  var pos = strip && strip.querySelector(".tok.pos");
  if (!pos) return null;
  var below = pos.getBoundingClientRect().bottom - strip.getBoundingClientRect().bottom + 40;
  if (below > 0) strip.scrollTop += below;  // (the 40 px of room can ask for a scroll a box that fits ignores)
  if (strip.scrollTop === 0) return null;
  var hint = document.createElement("button");
  hint.type = "button"; hint.className = "above";
  function above() {  // the tokens wholly above the box's visible area (folded segments draw none)
    var top = strip.getBoundingClientRect().top, n = 0;
    strip.querySelectorAll(".tok").forEach(function (t) {
      var r = t.getBoundingClientRect();
      if (r.height && r.bottom <= top) n += 1;
    });
    return n;
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
  return hint;
}
