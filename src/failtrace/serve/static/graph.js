/* The stored pruned graph: layers (rows) × token positions (columns). The edge-mass slider keeps, per transition,
   the strongest edges holding a share p of its |weight| (mass_before < p, computed by the server) and then only what
   still reaches the prediction; hover highlights a node's inputs and outputs; click pins a node and shows the
   subgraph connecting it to the prediction; search marks nodes by token text; Export saves the drawn subgraph.
   NC-IA cases: "show ablation" marks the nodes whose ablation was tested (paper Fig. 3: ringed black, numbered)
   and highlights every kept path from them to the prediction (recomputed after each re-pruning).
   State in the URL: #/graph/<id>?p=0.6&pin=1:37&abl=1 */
(function (FT) {
  "use strict";
  var el = FT.el, key = function (s, t) { return s + ":" + t; };

  function prune(D, p) {  // edges kept at mass p that still reach the final node (walked from the top stage down)
    var reach = {}, out = [];
    reach[key(D.final[0], D.final[1])] = true;
    D.edges.filter(function (e) { return e[5] < p; }).sort(function (a, b) { return b[2] - a[2]; }).forEach(function (e) {
      if (reach[key(e[2], e[3])]) { out.push(e); reach[key(e[0], e[1])] = true; }
    });
    return {edges: out, nodes: reach};
  }

  function closure(adj, k) {
    var seen = {}, stack = [k]; seen[k] = true;
    while (stack.length) (adj[stack.pop()] || []).forEach(function (y) { if (!seen[y]) { seen[y] = true; stack.push(y); } });
    return seen;
  }

  function subgraph(kept, ks) {  // descendants of ks = every path from them to the prediction (all kept edges reach it)
    var up = {}, des = {};
    kept.edges.forEach(function (e) { (up[key(e[0], e[1])] = up[key(e[0], e[1])] || []).push(key(e[2], e[3])); });
    [].concat(ks).forEach(function (k) { Object.assign(des, closure(up, k)); });
    return {nodes: des, edges: kept.edges.filter(function (e) { return des[key(e[0], e[1])] && des[key(e[2], e[3])]; })};
  }

  function draw(D, svg, kept, state) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var info = {}; D.nodes.forEach(function (n) { info[key(n[0], n[1])] = n; });
    var cols = Object.keys(kept.nodes).map(function (k) { return +k.split(":")[1]; })
      .filter(function (v, i, a) { return a.indexOf(v) === i; }).sort(function (a, b) { return a - b; });
    // token labels below the embeddings and again above the last layer (T), so a tall graph shows them at once
    var S = D.stages.length, L = 56, B = 110, T = 100, dx = Math.max(26, Math.min(120, 1100 / Math.max(1, cols.length)));
    var dy = Math.max(40, Math.min(110, 420 / Math.max(1, S - 1))), W = L + 20 + dx * cols.length, H = T + B + dy * (S - 1);
    var X = {}; cols.forEach(function (c, i) { X[c] = L + dx * (i + 0.5); });
    var Y = function (s) { return H - B - s * dy; };
    svg.setAttribute("width", W); svg.setAttribute("height", H);
    cols.forEach(function (c) {
      var tok = FT.shown(D.tokens[c]); tok = tok.length > 16 ? tok.slice(0, 15) + "…" : tok;
      [el("text", {transform: "translate(" + (X[c] - 3) + "," + (H - B + 14) + ") rotate(60)"}, tok + " [" + c + "]"),
       el("text", {transform: "translate(" + (X[c] + 3) + "," + (T - 14) + ") rotate(-60)"}, tok + " [" + c + "]")]
        .forEach(function (t) { if (D.special[c]) t.style.fill = "#6b7280"; svg.appendChild(t); });
    });
    var abl = ablatedKeys(D, kept, state), sub = state.pin && kept.nodes[state.pin] ? subgraph(kept, state.pin)
      : (abl.length ? subgraph(kept, abl) : null);
    var wmax = Math.max.apply(null, [1e-30].concat(kept.edges.map(function (e) { return Math.abs(e[4]); })));
    var red = FT.mix(1), blue = FT.mix(-1);
    kept.edges.slice().sort(function (a, b) { return Math.abs(a[4]) - Math.abs(b[4]); }).forEach(function (e) {
      var a = Math.sqrt(Math.abs(e[4]) / wmax), on = !sub || (sub.nodes[key(e[0], e[1])] && sub.nodes[key(e[2], e[3])]);
      svg.appendChild(el("line", {x1: X[e[1]], y1: Y(e[0]), x2: X[e[3]], y2: Y(e[2]), stroke: e[4] > 0 ? red : blue,
        "stroke-width": 0.4 + 3 * a, "stroke-opacity": 0.15 + 0.8 * a, class: "e" + (on ? (sub ? " on" : "") : " dim"),
        "data-a": key(e[0], e[1]), "data-b": key(e[2], e[3])}));
    });
    // search: the token as stored or as its label prints it (FT.shown: "·water" finds " water", "↵" a newline)
    var q = (state.search || "").toLowerCase();
    function found(t) {
      return String(t).toLowerCase().indexOf(q) >= 0 || FT.shown(t).toLowerCase().indexOf(q) >= 0;
    }
    Object.keys(kept.nodes).forEach(function (k) {
      var n = info[k] || [+k.split(":")[0], +k.split(":")[1], 0, 0], sp = D.special[n[1]];
      var cls = "n" + (k === state.pin ? " pin" : "") + (sub && !sub.nodes[k] ? " dim" : "") + (sub && sub.nodes[k] ? " on" : "") +
        (q && found(D.tokens[n[1]]) ? " match" : "");
      var said = nodeName(D, k) + "  " + FT.quoted(D.tokens[n[1]]) + "\nR = " + FT.fmt(n[2], 5) +
                 "\nnormalised |R| = " + FT.fmt(n[3], 3) + (sp ? "\n(special token)" : "");
      // a node is reached with Tab too: focus shows what hover shows, Enter or Space pins it as a click does
      var c = el("circle", {cx: X[n[1]], cy: Y(n[0]), r: 2.5 + 6 * Math.min(1, n[3]), class: cls, "data-k": k,
                            tabindex: "0", role: "button", "aria-pressed": k === state.pin ? "true" : "false",
                            "aria-label": said.replace(/\n/g, ", "),
                            fill: sp ? "rgb(" + FT.meta.colors.special.join(",") + ")" : (n[2] > 0 ? red : blue)});
      function show(ev) { FT.tip(ev, said); if (!sub) hover(svg, k); }
      function hide(ev) { FT.tip(ev, null); if (!sub) hover(svg, null); }
      c.addEventListener("mouseenter", show);
      c.addEventListener("mouseleave", hide);
      c.addEventListener("focus", function () { var b = c.getBoundingClientRect(); show({clientX: b.right, clientY: b.bottom}); });
      c.addEventListener("blur", hide);
      c.addEventListener("click", function (ev) { ev.stopPropagation(); state.setPin(state.pin === k ? null : k); });
      c.addEventListener("keydown", function (ev) {
        if (ev.key !== "Enter" && ev.key !== " ") return;
        ev.preventDefault(); ev.stopPropagation();
        state.setPin(state.pin === k ? null : k, k);  // the redraw makes the node again: focus goes back to it
      });
      svg.appendChild(c);
    });
    abl.forEach(function (k, j) {  // a ring and the ablation order on each ablated node
      var p = k.split(":"), x = X[+p[1]], y = Y(+p[0]);
      svg.appendChild(el("circle", {cx: x, cy: y, r: 10, class: "abl", "data-k": k}));
      svg.appendChild(el("text", {x: x + 9, y: y - 8, class: "abl-n"}, String(D.ablation.nodes.findIndex(function (a) {
        return key(a.stage, a.position) === k; }) + 1)));
    });
    // the stage names last, on a pale band: the band moves with a sideways scroll (follow), so a graph wider than
    // its box keeps its row labels in view
    var band = el("g", {class: "stages"}, [el("rect", {x: 0, y: T - 12, width: L - 6, height: H - B - T + 24})]);
    D.stages.forEach(function (name, s) { band.appendChild(el("text", {x: 4, y: Y(s) + 4}, name)); });
    svg.appendChild(band);
    fit(svg, W, H);
    band.setAttribute("transform", "translate(" + (svg.parentNode ? svg.parentNode.scrollLeft : 0) + ",0)");
    return sub;
  }

  function follow(wrap) {  // keep the stage names at the box's left edge (SVG units are pixels: fit sets width = box)
    wrap.addEventListener("scroll", function () {
      var band = wrap.querySelector("g.stages");
      if (band) band.setAttribute("transform", "translate(" + wrap.scrollLeft + ",0)");
    });
  }

  function fit(svg, W, H) {  // the rotated token labels reach past the plot's margins: the SVG grows to hold them
    var bb = svg.getBBox();  // (all it draws, transforms included; the SVG is in the page when drawn)
    var x0 = Math.min(0, Math.floor(bb.x) - 2), y0 = Math.min(0, Math.floor(bb.y) - 2);
    var x1 = Math.max(W, Math.ceil(bb.x + bb.width) + 2), y1 = Math.max(H, Math.ceil(bb.y + bb.height) + 2);
    svg.setAttribute("viewBox", [x0, y0, x1 - x0, y1 - y0].join(" "));
    svg.setAttribute("width", x1 - x0); svg.setAttribute("height", y1 - y0);
  }

  function ablatedKeys(D, kept, state) {  // the ablated nodes drawn at this p, when the toggle is on
    if (!state.abl || !D.ablation) return [];
    return D.ablation.nodes.filter(function (a) { return a.stage !== null && kept.nodes[key(a.stage, a.position)]; })
      .map(function (a) { return key(a.stage, a.position); });
  }

  function ablationText(D, kept, state, sub) {
    var A = D.ablation, shown = ablatedKeys(D, kept, state).length;
    return "ablating " + A.k + " node" + (A.k === 1 ? "" : "s") + ": Δℓ " + FT.fmt(A.delta_before, 2) + " → " +
      FT.fmt(A.delta_after, 2) + (A.flipped ? " (flipped)" : " (not flipped)") + "; " + shown + " of them drawn at this p, " +
      (sub ? sub.edges.length : 0) + " edges lead from them to the prediction";
  }

  function hover(svg, k) {  // a node's direct inputs and outputs, the rest dimmed
    svg.querySelectorAll("line.e").forEach(function (l) { l.classList.toggle("dim", k !== null && l.dataset.a !== k && l.dataset.b !== k); });
  }

  // the graph drawn, or the pinned node's subgraph; with "show ablation" the drawn graph too, its lit paths named
  function exportJSON(D, kept, sub, state) {
    var pinned = state.pin && sub, g = pinned ? sub : kept, nodes = D.nodes.filter(function (n) { return g.nodes[key(n[0], n[1])]; });
    var lit = !pinned && sub ? Object.keys(sub.nodes).map(function (k) { return k.split(":").map(Number); }) : null;
    // stage: the index into stages (0 = embeddings, as the URL's pin=stage:position); stage_name: the row's label
    var blob = new Blob([JSON.stringify({case_id: D.case_id, p: state.p, pinned: state.pin,
      pinned_name: state.pin ? nodeName(D, state.pin) : null, stages: D.stages, final: D.final,
      nodes: nodes.map(function (n) { return {stage: n[0], stage_name: D.stages[n[0]], token: n[1], text: D.tokens[n[1]],
                                               relevance: n[2]}; }),
      edges: g.edges.map(function (e) { return {source: [e[0], e[1]], target: [e[2], e[3]], weight: e[4]}; }),
      ablation_paths: lit}, null, 1)], {type: "application/json"});
    var a = el("a", {href: URL.createObjectURL(blob), download: "failtrace-graph-" + D.case_id + (state.pin ? "-" + state.pin.replace(":", "_") : "") + ".json"});
    document.body.appendChild(a); a.click(); a.remove();
  }

  function nodeName(D, key) {  // "stage:position" as the tooltip names it: "L26 / pos 42"
    var sp = key.split(":");
    return D.stages[+sp[0]] + " / pos " + sp[1];
  }

  FT.views.graph = function (view, params, id) {
    return FT.api("/api/cases/" + encodeURIComponent(id) + "/graph").then(paint, function (e) {
      return FT.followWholeId(e, "graph", params, function (whole) { return FT.views.graph(view, params, whole); });
    });
    function paint(D) {
      FT.crumb([el("a", {href: "#/case/" + id}, "case " + D.item_id), el("a", {href: "#/graph/" + id}, "graph")]);
      var asked = parseFloat(params.get("p"));  // none: 1, every stored edge, as the report draws it; p=0 is 0.01
      var p = Math.min(1, Math.max(0.01, Number.isFinite(asked) ? asked : 1));
      // a hand-edited p the slider cannot take was drawn as another one without a word (the table says so of its own)
      var fixed = params.has("p") && !(asked === p || (asked === 0 && p === 0.01)) ? "p=" + FT.clip(params.get("p"), 40) +
        " is not an edge-mass share the slider takes (0.01 to 1; 0 reads as 0.01): drawn at " + p.toFixed(2) : null;
      var state = {p: p, pin: params.get("pin"), search: params.get("q") || "", abl: params.get("abl") === "1"};
      function save() {
        var u = new URLSearchParams(); u.set("p", state.p.toFixed(2));
        if (state.pin) u.set("pin", state.pin); if (state.search) u.set("q", state.search); if (state.abl) u.set("abl", "1");
        FT.go("graph", id, u, true);
      }
      view.textContent = "";
      if (fixed) view.appendChild(el("p", {class: "note", id: "graph-note"}, fixed));
      var slider = el("input", {type: "range", id: "mass", min: "0.01", max: "1", step: "0.01", value: String(p)});
      var pv = el("span", {id: "mass-value"}), count = el("span", {id: "gcount"}), subInfo = el("span", {id: "gsub", class: "muted"});
      var line = el("div", {class: "gstatus", id: "gstatus"}, [count, " · ", subInfo]);
      var search = el("input", {type: "search", id: "gsearch", placeholder: "find token…", value: state.search,
                                "aria-label": "find nodes by token text"});
      var svg = el("svg", {id: "graph", xmlns: "http://www.w3.org/2000/svg"}), kept = null, sub = null;
      var wrap = el("div", {class: "gwrap"}, svg);
      function redraw() {
        kept = prune(D, state.p); sub = draw(D, svg, kept, state);
        if (state.pin && !kept.nodes[state.pin]) state.pin = null;
        pv.textContent = state.p.toFixed(2);
        count.textContent = Object.keys(kept.nodes).length + " nodes, " + kept.edges.length + " edges drawn (of " + D.edges.length + " stored)";
        subInfo.textContent = state.pin && sub ? "pinned " + nodeName(D, state.pin) + ": subgraph to the prediction has " + Object.keys(sub.nodes).length +
          " nodes, " + sub.edges.length + " edges" : (state.abl && D.ablation ? ablationText(D, kept, state, sub) : "click a node (or Tab to it, Enter) to pin it");
        line.title = line.textContent;
        save();
      }
      state.setPin = function (k, focus) {
        state.pin = k; redraw();
        var again = focus && svg.querySelector("circle.n[data-k='" + focus + "']");
        if (again) again.focus();
      };
      slider.addEventListener("input", function () { state.p = +slider.value; redraw(); });
      search.addEventListener("input", function () { state.search = search.value; redraw(); });
      var ablToggle = D.ablation ? el("label", {title: "paper Fig. 3: the nodes whose ablation was tested for the category " +
        D.ablation.category}, [el("input", {type: "checkbox", id: "abl"}), " show ablation"]) : el("span");
      var ablBox = ablToggle.querySelector("input");
      if (ablBox) { ablBox.checked = state.abl; ablBox.addEventListener("change", function () { state.abl = ablBox.checked; redraw(); }); }
      svg.addEventListener("click", function () { if (state.pin) state.setPin(null); });
      view.appendChild(el("section", {class: "block"}, [
        el("h2", {}, "Attribution graph"),
        el("p", {class: "note"}, "Rows: stages (embeddings, then each decoder layer's output); columns: token positions with a kept node. " +
           "Red edges/nodes push towards the target, blue towards the contrast, grey nodes sit on special token ids " +
           "(e.g. <|im_start|>); node size = normalised |R| in its stage. " +
           "Stored graph pruned with " + ((D.settings || {}).prune || "?") + "; the slider re-prunes those edges by cumulative mass."),
        el("div", {class: "graphbar"}, [el("label", {}, ["edge mass p ", slider, " ", pv]), search, ablToggle,
          el("button", {type: "button", id: "export", onclick: function () { exportJSON(D, kept, sub, state); }}, "export JSON")]),
        // the counts and the pin / ablation line change with every click: one line of their own, cut with "…" (the
        // whole text on hover), so the graph below never moves and a second click lands on the node just pinned
        line,
        wrap]));
      follow(wrap);
      redraw();
    }
  };
})(FT);
