/* failtrace explorer: shared helpers (FT namespace). No libraries, no other origin: every request goes to /api. */
var FT = (function () {
  "use strict";
  var FT = {views: {}, meta: null, gen: 0, NO_SERVER: "the explorer server does not answer (stopped?)"};

  // A read answered after the user moved on (FT.gen: the router's count of views started) never settles: the view
  // that asked is not the one on screen, and painting it, or following its 404 to a whole case id, would draw over
  // the newer view or rewrite its URL. Writes (POST) always settle: their outcome is said wherever it lands.
  FT.api = function (path, opts) {
    var asked = FT.gen, read = !opts || !opts.method || opts.method === "GET";
    var stale = function () { return read && asked !== FT.gen; };
    var never = function () { return new Promise(function () {}); };
    return fetch(path, opts || {}).catch(function () {  // no answer at all: the browser's "Failed to fetch"
      var err = new Error(FT.NO_SERVER); err.status = 0; throw err;
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (body) {
        if (!r.ok) {
          var d = body && body.detail;
          var msg = typeof d === "string" ? d : Array.isArray(d) ? d.map(FT.problem).join("; ")
            : JSON.stringify(d || r.statusText);
          var err = new Error(r.status + ": " + msg); err.status = r.status; err.detail = d; err.headers = r.headers;
          throw err;
        }
        return body;
      });
    }).then(function (body) { return stale() ? never() : body; }, function (e) { if (stale()) return never(); throw e; });
  };

  /* A view of one case opened by a short id (as `failtrace show` prints them): when only one case starts so, the
     API's 404 names it in X-Failtrace-Case; the URL is rewritten to the whole id and again(whole) draws that case. */
  FT.followWholeId = function (e, route, params, again) {
    var whole = e && e.status === 404 && e.headers ? e.headers.get("X-Failtrace-Case") : null;
    if (!whole) throw e;
    FT.go(route, whole, params, true);
    return again(whole);
  };

  /* one validation problem of a 422 (FastAPI's [{loc, msg}, ...]) as "where: what", e.g. "sort: Input should be ..." */
  FT.problem = function (p) {
    if (!p || typeof p !== "object") return String(p);
    var at = (p.loc || []).filter(function (x) { return x !== "query" && x !== "body" && x !== "path"; }).join(".");
    return (at ? at + ": " : "") + (p.msg || JSON.stringify(p));
  };

  FT.post = function (path, body) {
    return FT.api(path, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  };

  /* el("div", {class: "x", onclick: f}, [children or text]) */
  FT.el = function (tag, attrs, children) {  // "title" is SVG's tooltip here: the page's own <title> is static
    var svg = ["svg", "line", "circle", "text", "g", "polyline", "path", "rect", "title"].indexOf(tag) >= 0;
    var e = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      var v = attrs[k];
      if (v === null || v === undefined || v === false) return;
      if (k.slice(0, 2) === "on") e.addEventListener(k.slice(2), v);
      else if (k === "text") e.textContent = v;
      else if (k === "html") e.innerHTML = v;  // only for HTML rendered by the server's own evidence renderer
      else e.setAttribute(k, v === true ? "" : v);
    });
    [].concat(children === undefined ? [] : children).forEach(function (c) {
      if (c === null || c === undefined) return;
      e.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
    });
    return e;
  };

  FT.fmt = function (x, d) {
    if (x === null || x === undefined || !isFinite(x)) return "—";
    d = d === undefined ? 3 : d;
    return Math.abs(x) >= 1e4 || (x !== 0 && Math.abs(x) < Math.pow(10, -d)) ? Number(x).toExponential(2)
      : Number(x).toFixed(d);
  };

  var WS = {" ": "·", "\n": "↵", "\t": "→", "\r": "␍", "\x7f": "␡"};
  function hex(c, n) { return ("000" + c.charCodeAt(0).toString(16)).slice(-n); }
  // visible whitespace and control characters, as failtrace show prints them (attribution.record.visible): another
  // C0 control as its symbol (␅), a C1 one as \x85, a lone surrogate as \ud800; ∅ for an empty token (hoverable)
  FT.shown = function (tok) {
    var s = String(tok === null || tok === undefined ? "" : tok), out = "";
    for (var i = 0; i < s.length; i++) {  // code units, ES5: a lone surrogate is one without its partner beside it
      var c = s.charAt(i), code = s.charCodeAt(i), next = s.charCodeAt(i + 1), prev = s.charCodeAt(i - 1);
      if (WS[c]) out += WS[c];
      else if (code < 0x20) out += String.fromCharCode(0x2400 + code);
      else if (code >= 0x80 && code < 0xa0) out += "\\x" + hex(c, 2);
      else if (code >= 0xd800 && code <= 0xdbff && !(next >= 0xdc00 && next <= 0xdfff)) out += "\\u" + hex(c, 4);
      else if (code >= 0xdc00 && code <= 0xdfff && !(prev >= 0xd800 && prev <= 0xdbff)) out += "\\u" + hex(c, 4);
      else out += c;
    }
    return out || "∅";
  };

  FT.quoted = function (tok) {  // a token as every view names one: ‹shown›, or — when there is none
    return tok === null || tok === undefined ? "—" : "‹" + FT.shown(tok) + "›";
  };

  /* white blended towards red (v > 0, supports the target) or blue (v < 0, the contrast); colours from /api/meta */
  // a heatmap token's text: white from the side's threshold on (/api/meta, worked out by WCAG contrast), else black
  FT.ink = function (v) {
    var th = FT.meta.colors.white_text_above;
    return Math.abs(v) >= (v > 0 ? th.red : th.blue) ? "#fff" : "#000";
  };

  FT.mix = function (v) {
    var c = FT.meta.colors, a = Math.min(1, Math.abs(v) || 0), end = v > 0 ? c.red : c.blue;
    return "rgb(" + end.map(function (x) { return Math.round(255 + (x - 255) * a); }).join(",") + ")";
  };

  // a category or pattern as a coloured label, with the paper's name for it and its meaning on hover (the one
  // vocabulary of `failtrace status` and the report: /api/meta's category_text and pattern_text)
  FT.badge = function (label, colours) {
    if (!label) return FT.el("span", {class: "muted"}, "—");
    var said = (FT.meta.category_text || {})[label] || (FT.meta.pattern_text || {})[label];
    var bg = (colours || {})[label] || "#6b7280";  // its text: white or near-black, as it reads on it (WCAG AA),
    // worked out beside the palette (views/contrast.py) and sent in /api/meta, as the report draws it
    return FT.el("span", {class: "badge", title: said ? said[0] + ": " + said[1] : null,
                          style: "background:" + bg + ";color:" + (FT.meta.colors.ink[bg] || "#ffffff")}, label);
  };

  /* "#/route/arg?x=1&y=2" <-> {route, arg, params: URLSearchParams}; a hand-edited link whose arg is not valid
     percent-encoding (#/case/%E0) gets bad: the message, instead of a URIError that would leave the page blank */
  FT.parseHash = function () {
    var h = location.hash.replace(/^#\/?/, ""), q = h.indexOf("?");
    var path = q >= 0 ? h.slice(0, q) : h, parts = path.split("/"), raw = parts.slice(1).join("/"), arg = raw, bad = null;
    try { arg = decodeURIComponent(raw); } catch (e) { bad = "malformed link: '" + raw + "' is not valid percent-encoding"; }
    // a case id is what the API takes (api.py CASE_ID); anything else (#/case/, #/case/.., #/case/a%2Fb) got a bare
    // "404: Not Found" from a path the server does not route
    if (!bad && (parts[0] === "case" || parts[0] === "graph") && !/^[0-9A-Za-z_-]{1,64}$/.test(arg))
      bad = arg ? "malformed link: '" + FT.clip(arg, 80) + "' is not a case id (letters, digits, - and _)"
        : "malformed link: no case id after #/" + parts[0] + "/ (the ids: the cases table, or `failtrace show`)";
    var ps = new URLSearchParams(q >= 0 ? h.slice(q + 1) : "");  // an item link names its run and item: said so, not a 422
    if (!bad && parts[0] === "item" && !(ps.get("run_id") && ps.get("item_id")))
      bad = "malformed link: an item link needs run_id and item_id (#/item?run_id=…&item_id=…; open one from the cases table)";
    return {route: parts[0] || "cases", arg: arg, bad: bad, params: ps};
  };
  FT.go = function (route, arg, params, replace) {
    var qs = params ? params.toString() : "";
    var h = "#/" + route + (arg ? "/" + encodeURIComponent(arg) : "") + (qs ? "?" + qs : "");
    if (!replace) { location.hash = h; return; }
    history.replaceState(null, "", h);
    if (FT.onReplace) FT.onReplace(location.hash);  // the router's: data-ready-hash follows a view's own rewrite
  };

  FT.clip = function (s, most) {  // echoed input (a hand-edited link) at most `most` characters
    s = String(s);
    return s.length <= most ? s : s.slice(0, most - 1) + "… (" + s.length + " characters)";
  };

  /* a status line (its element by id: a redraw replaces the element, so it is looked up when said) */
  FT.say = function (id, text, bad) {
    var s = document.getElementById(id);
    if (!s) return;
    s.textContent = text;
    s.classList.toggle("err", !!bad);
    s.classList.toggle("muted", !bad);
  };

  /* A review write: every write button is disabled until the request settles (a double click records one row);
     then the view is drawn again where the page was and its new status line says "saved"; a refusal is said in
     the status line as an error and the buttons work again. */
  FT.write = function (send, statusId, saved) {  // saved: what the status then says (default "saved")
    var buttons = [].slice.call(document.querySelectorAll("button.write"));
    // the control used keeps the keyboard's place: disabling it (and the redraw that replaces it) dropped focus to
    // <body>, so a keyboard user started again from the top of the page
    var used = document.activeElement && document.activeElement.id;
    function refocus() { var b = used && document.getElementById(used); if (b) b.focus(); }
    buttons.forEach(function (b) { b.disabled = true; });
    FT.say(statusId, "saving…");
    return send().then(function () {
      return FT.redraw().then(function () { FT.say(statusId, saved || "saved"); refocus(); });
    }, function (e) {
      buttons.forEach(function (b) { b.disabled = false; });
      FT.say(statusId, e.message || String(e), true);
      refocus();
    });
  };

  /* A page drawn before a write in another tab showed the old decision until reloaded. In review mode, when the
     page comes back into view it asks the server how many reviews there are (GET /api/reviews/version); if that
     changed since it was drawn, the view is drawn again where it was, a comment being typed is kept, and a line says
     why the page changed. FT.reviewsSeen is what this page last drew (set by the router after each view). */
  FT.reviewsSeen = null;
  FT.noteReviews = function () {
    if (!FT.meta || !FT.meta.review) return Promise.resolve();
    return FT.api("/api/reviews/version").then(function (v) { FT.reviewsSeen = v.count + "@" + v.newest; },
                                                function () {});
  };
  FT.checkReviews = function () {
    if (!FT.meta || !FT.meta.review || FT.reviewsSeen === null || document.hidden) return;
    var seen = FT.reviewsSeen;
    fetch("/api/reviews/version").then(function (r) { return r.ok ? r.json() : null; }).then(function (v) {
      if (!v || v.count + "@" + v.newest === seen || seen !== FT.reviewsSeen) return;
      var typed = {};  // comments being typed, by id (a redraw makes the form again)
      [].forEach.call(document.querySelectorAll("textarea[id], input[type=text][id]"), function (t) {
        if (t.value) typed[t.id] = t.value; });
      FT.redraw().then(function () {
        Object.keys(typed).forEach(function (id) { var t = document.getElementById(id); if (t) t.value = typed[id]; });
        var view = document.getElementById("view");
        view.insertBefore(FT.el("p", {class: "note", id: "reviews-changed", role: "status"},
                                "updated: reviews were written elsewhere (another tab or reviewer) since this page " +
                                "was drawn; it now shows them"), view.firstChild);
      });
    }, function () {});
  };

  /* The review decision in force on a pair (the newest accept or reject), as the case page and the item page say
     it: "pair rejected (the decision in force, <time> UTC[: comment]); export-dpo, finetune, status and the report leave it out" (that
     last part for a pair with a case: only cases are training data). */
  FT.decisionSaid = function (d, withComment, hasCase) {
    return [FT.el("strong", {}, "pair " + d.decision + "ed"),
            " (the decision in force, " + String(d.created_at).replace(/\.\d+$/, "") + " UTC" +
            (withComment && d.comment ? ": " + d.comment : "") + ")" +
            (d.decision === "reject" && hasCase ? "; export-dpo, finetune, status and the report leave it out" : "")];
  };

  var tip = null;
  FT.tip = function (ev, text) {
    tip = tip || document.getElementById("tip");
    if (!text) { tip.style.display = "none"; return; }
    tip.textContent = text; tip.style.display = "block";
    tip.style.left = Math.min(ev.clientX + 12, window.innerWidth - 260) + "px";
    var below = ev.clientY + 14, h = tip.offsetHeight;  // near the window's bottom edge: above the pointer instead
    tip.style.top = (below + h > window.innerHeight ? Math.max(0, ev.clientY - h - 8) : below) + "px";
  };

  FT.crumb = function (nodes) {
    var c = document.getElementById("nav-crumb"); c.textContent = "";
    [].concat(nodes || []).filter(Boolean).forEach(function (n) { c.appendChild(FT.el("span", {class: "sep"}, "›")); c.appendChild(n); });
  };

  /* A failure in red; a 404 (no such case, nothing compared yet) is what the store holds, not a fault: said plainly,
     with the way back to the cases table */
  FT.error = function (view, err) {
    view.textContent = "";
    var missing = err && err.status === 404, text = String((err && err.message) || err);
    view.appendChild(FT.el("p", {class: missing ? "empty" : "err", id: "error"}, missing ? text.replace(/^404: /, "") : text));
    if (missing) view.appendChild(FT.el("p", {}, [FT.el("a", {href: "#/cases", id: "error-back"}, "← the cases table")]));
  };
  return FT;
})();
