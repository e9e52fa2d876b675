/* One case: heatmap of the context (method switcher; hover = token, R, normalised R; special tokens grey; segments
   marked and collapsible), the top tokens in masking order, target vs contrast, Δℓ, masking-flip curves, category and
   pattern with evidence, reviews.
   State in the URL: #/case/<id>?method=attnlrp&closed=0,212 (folded boxes by first position) */
(function (FT) {
  "use strict";
  var el = FT.el;
  function methodsOf(c) {  // in the server's order (/api/meta: the attribution registry's, as every view), then
    var known = FT.meta.methods;  // any a later analysis added after the page loaded
    return known.filter(function (m) { return c.methods[m]; }).concat(
      Object.keys(c.methods).filter(function (m) { return known.indexOf(m) < 0; }).sort());
  }

  function runs(labels) {  // contiguous spans of one segment: [[name, start, end), ...]
    var out = [];
    labels.forEach(function (s, i) {
      if (out.length && out[out.length - 1][0] === s) out[out.length - 1][2] = i + 1; else out.push([s, i, i + 1]);
    });
    return out;
  }

  function strip(c, method, params) {
    // closed: the folded boxes by their first token's position (a segment name, as older links wrote, folds its boxes)
    var m = c.methods[method], closed = (params.get("closed") || "").split(",");
    var readout = el("div", {class: "readout", id: "readout", "aria-live": "polite"}, "hover a token (or Tab to the heatmap, then the arrow keys)");
    // by keyboard: the strip is one Tab stop; the arrow keys (Home, End) move a marked token through the open
    // segments and the readout says it, as hover does
    var box = el("div", {class: "strip", id: "strip", tabindex: "0", role: "group",
                         "aria-label": "context heatmap: arrow keys move from token to token"});
    runs(c.labels).forEach(function (run) {
      var colour = FT.meta.colors.segments[run[0]] || FT.meta.colors.other_segment;  // one colour per name, and its
      var label = FT.meta.colors.segment_labels[run[0]] || FT.meta.colors.segment_labels[""];  // label's (WCAG AA)
      var rel = c.relevant_segments.indexOf(run[0]) >= 0 ? " (relevant)" : "";
      var d = el("details", {class: "seg", "data-seg": run[0], "data-start": String(run[1]), style: "--segc:" + colour + ";--segl:" + label,
                             open: closed.indexOf(String(run[1])) < 0 && closed.indexOf(run[0]) < 0},
                 el("summary", {title: "click to fold this segment"}, (run[0] || "no segment") + rel + " · " + (run[2] - run[1])));
      d.addEventListener("toggle", function () {
        var shut = [].slice.call(box.querySelectorAll("details.seg:not([open])")).map(function (x) { return x.dataset.start; });
        // a details element fires toggle when drawn open, too: only a fold or unfold the URL does not hold yet
        // rewrites it (a rewrite for nothing turned closed=0,212 into closed=0%2C212 after the page was painted)
        var now = FT.parseHash(), p = now.params;
        if (now.route !== "case" || now.arg !== c.case_id || shut.join(",") === (p.get("closed") || "")) return;
        if (shut.length) p.set("closed", shut.join(",")); else p.delete("closed");
        FT.go("case", c.case_id, p, true);
      });
      var frag = document.createDocumentFragment();
      for (var i = run[1]; i < run[2]; i++) frag.appendChild(token(c, m, i));
      d.appendChild(frag);
      box.appendChild(d);
    });
    box.addEventListener("mouseover", function (ev) {
      var t = ev.target.closest ? ev.target.closest(".tok") : null;
      if (!t) { FT.tip(ev, null); return; }
      var text = tokenText(c, m, +t.dataset.p);
      readout.textContent = text.replace("\n", "   "); FT.tip(ev, text);
    });
    box.addEventListener("mouseleave", function (ev) { FT.tip(ev, null); });
    box.addEventListener("keydown", function (ev) {
      var open = [].slice.call(box.querySelectorAll("details.seg[open] .tok"));
      if (!open.length) return;
      var at = open.indexOf(box.querySelector(".tok.cur")), to = {ArrowRight: at + 1, ArrowDown: at + 1, ArrowLeft: at - 1,
                                                                  ArrowUp: at - 1, Home: 0, End: open.length - 1}[ev.key];
      if (to === undefined) return;
      ev.preventDefault();
      if (at < 0 && (ev.key === "ArrowLeft" || ev.key === "ArrowUp")) to = open.length - 1;
      box.markToken(open[Math.max(0, Math.min(open.length - 1, to))]);
    });
    box.addEventListener("blur", function (ev) { FT.tip(ev, null); });
    box.markToken = function (t) {  // the keyboard's token: marked, in view, said in the readout (and its tip)
      var was = box.querySelector(".tok.cur");
      if (was) was.classList.remove("cur");
      t.classList.add("cur");
      t.scrollIntoView({block: "nearest"});
      var text = tokenText(c, m, +t.dataset.p), b = t.getBoundingClientRect();
      readout.textContent = text.replace("\n", "   ");
      FT.tip({clientX: b.left, clientY: b.bottom}, text);
    };
    box.appendChild(el("span", {class: "next"}, ["⟶ ", el("span", {class: "pill tgt"}, FT.shown(c.target.text)), " vs ",
                                                  el("span", {class: "pill ctr"}, FT.shown(c.contrast.text))]));
    return [readout, box];
  }

  function token(c, m, i) {  // one span; hover is handled once for the whole strip (see tokenText)
    var sp = c.special[i], v = m && m.drawable ? m.norm[i] : null;
    var t = document.createElement("span");
    t.className = "tok" + (sp ? " sp" : "") + (i === c.tokens.length - 1 ? " pos" : "") + (i >= c.prompt_length ? " ans" : "");
    t.dataset.p = i;
    t.textContent = FT.shown(c.tokens[i]);
    if (!sp && v !== null) t.style.cssText = "background:" + FT.mix(v) + ";color:" + FT.ink(v);
    return t;
  }

  function tokenText(c, m, i) {
    var sp = c.special[i], v = m && m.drawable ? m.norm[i] : null, raw = m && m.drawable ? m.raw[i] : null;
    return "pos " + i + " · " + FT.quoted(c.tokens[i]) + " · " + (c.labels[i] || "no segment") +
      (sp ? " · special token id (grey)" : "") + "\nR = " + FT.fmt(raw, 5) + "   normalised = " + FT.fmt(v, 3);
  }

  // Δℓ after masking the top-k tokens, k = 0..K, one group per method; a null point (not computed) is a gap: the
  // line stops there and goes on after it (isFinite(null) is true: it would be drawn at Δℓ = 0, and a line joining
  // its neighbours would look computed); a point with gaps on both sides is a dot
  function kLabel(r) { return r ? r.k_label : "—"; }  // the server's k_star_label: the number, "none" or "—"

  function curves(c, method) {
    var W = 520, H = 210, L = 46, B = 40, ms = methodsOf(c).filter(function (m) { return c.methods[m].flip_curve.length; });
    var all = []; ms.forEach(function (m) { all = all.concat(c.methods[m].flip_curve.filter(Number.isFinite)); });
    if (!all.length) return el("p", {class: "muted"}, "flip curves not computed");
    var lo = Math.min(0, Math.min.apply(null, all)), hi = Math.max(0, Math.max.apply(null, all)), span = hi - lo || 1;
    var K = Math.max.apply(null, ms.map(function (m) { return c.methods[m].flip_curve.length - 1; })) || 1;
    var X = function (k) { return L + (W - L - 10) * k / K; }, Y = function (y) { return 10 + (H - B - 10) * (hi - y) / span; };
    // no fixed size: the viewBox scales it to its box (explorer.css: at most W px wide), so a phone's page fits
    var svg = el("svg", {id: "flip", viewBox: "0 0 " + W + " " + H});
    svg.appendChild(el("line", {x1: L, x2: W - 10, y1: Y(0), y2: Y(0), stroke: "#9ca3af", "stroke-dasharray": "4 3"}));
    svg.appendChild(el("text", {x: 4, y: Y(0) + 4}, "Δℓ=0"));
    // the extremes, unless they sit on the zero line (no curve above / below 0): their labels would overprint "Δℓ=0"
    if (Y(0) - Y(hi) > 14) svg.appendChild(el("text", {x: 4, y: Y(hi) + 10}, FT.fmt(hi, 2)));
    if (Y(lo) - Y(0) > 14) svg.appendChild(el("text", {x: 4, y: Y(lo)}, FT.fmt(lo, 2)));
    // the k axis: a tick and its number at each k (past K = 20, every ceil(K/10)-th and K itself), then its name
    var step = K > 20 ? Math.ceil(K / 10) : 1, ticks = [];
    for (var t = 0; t <= K; t += step) ticks.push(t);
    if (ticks[ticks.length - 1] !== K) ticks.push(K);
    svg.appendChild(el("line", {x1: L, x2: W - 10, y1: H - B + 4, y2: H - B + 4, stroke: "#9ca3af"}));
    ticks.forEach(function (k) {
      svg.appendChild(el("line", {x1: X(k), x2: X(k), y1: H - B + 4, y2: H - B + 8, stroke: "#9ca3af"}));
      svg.appendChild(el("text", {x: X(k), y: H - B + 19, "text-anchor": "middle", class: "tick"}, String(k)));
    });
    svg.appendChild(el("text", {x: W / 2 - 40, y: H - 4}, "k masked tokens"));
    ms.forEach(function (m) {
      var runs = [[]];
      c.methods[m].flip_curve.forEach(function (y, k) {
        if (Number.isFinite(y)) runs[runs.length - 1].push([X(k), Y(y)]); else if (runs[runs.length - 1].length) runs.push([]);
      });
      // each method in its colour (the report's faithfulness figure's); the one shown in the heatmap drawn on top
      var on = m === method, colour = (FT.meta.colors.methods || {})[m] || "#6b7280";
      var g = el("g", {"data-method": m, opacity: on ? 1 : 0.55});
      g.appendChild(el("title", {}, m + ": k* = " + kLabel(c.methods[m])));
      runs.forEach(function (run) {
        if (run.length === 1) g.appendChild(el("circle", {cx: run[0][0], cy: run[0][1], r: on ? 2.5 : 1.8, fill: colour}));
        else if (run.length) g.appendChild(el("polyline", {points: run.map(function (p) { return p[0] + "," + p[1]; }).join(" "),
                                                            fill: "none", stroke: colour, "stroke-width": on ? 2.5 : 1.2}));
      });
      svg.appendChild(g);
    });
    var on = svg.querySelector('g[data-method="' + method + '"]');
    if (on) svg.appendChild(on);  // drawn last: on top of the others
    return svg;
  }

  function curveLegend(c, method) {  // which line is which (the grey lines could only be told apart by hovering)
    return el("p", {class: "note legend", id: "flip-legend"}, methodsOf(c).filter(function (m) {
      return c.methods[m].flip_curve.length; }).map(function (m) {
      return el("span", {"data-method": m, style: m === method ? "font-weight:700" : null}, [
        el("span", {class: "sw", style: "background:" + ((FT.meta.colors.methods || {})[m] || "#6b7280")}),
        " " + m + " (k* " + kLabel(c.methods[m]) + ")  "]);
    }));
  }

  /* The tokens the flip curve masked, in its order (mask_order from the server: the case's own masking rule), with
     Δℓ after masking the first k; the first k* rows are the ones whose masking flips the prediction. A click on a row
     finds the token in the heatmap. */
  function maskedTokens(c, method) {
    var m = c.methods[method], box = el("section", {class: "block", id: "masked"});
    box.appendChild(el("h3", {}, "The top tokens of " + method + ", in masking order"));
    if (!m || !m.drawable) {
      box.appendChild(el("p", {class: "muted"}, "this method's relevance has no value per token: no masking order to list"));
      return box;
    }
    if (!m.mask_order || !m.mask_order.length) {
      box.appendChild(el("p", {class: "muted"}, "no token with positive relevance to mask for this method"));
      return box;
    }
    var k = m.flip_k, cap = m.mask_caption;  // the server's wording, the report's and failtrace show's ("shaded")
    box.appendChild(el("p", {class: "note"}, cap.charAt(0).toUpperCase() + cap.slice(1) + "." +
      " Δℓ after k: the margin with tokens 1..k masked (" + (c.masking ? c.masking.rule : "") +
      "); click a row to find the token in the heatmap."));
    var before = c.mask_view.before, after = c.mask_view.after, most = c.mask_view.clip;  // the server's, as the report and failtrace show use
    function clip(s, keepEnd) {  // at most `most` characters, so one long token cannot push the columns away
      return s.length <= most ? s : keepEnd ? "…" + s.slice(-(most - 1)) : s.slice(0, most - 1) + "…";
    }
    function topAfter(top) {  // the model's top next token with the first k masked ("—": not recorded for this case)
      if (!top) return el("td", {class: "tx muted"}, "—");
      return el("td", {class: "tx", title: top.role === "other" ? "neither the target nor the contrast" : "the " + top.role}, clip(FT.shown(top.text)));
    }
    function around(c, from, to, keepEnd) {  // the tokens in [from, to) as one line (↵ for newlines), clipped
      return clip(c.tokens.slice(Math.max(0, from), Math.min(c.tokens.length, to)).map(FT.shown).join(""), keepEnd);
    }
    var rows = m.mask_order.map(function (pos, i) {
      var tr = el("tr", {class: "hit-row" + (k !== null && i < k ? " flipset" : ""), "data-p": pos, title: "find it in the heatmap"}, [
        el("td", {class: "n"}, String(i + 1)), el("td", {class: "tx"}, clip(FT.shown(c.tokens[pos]))),
        el("td", {class: "tx ctx"}, [around(c, pos - before, pos, true),
          el("b", {}, clip(FT.shown(c.tokens[pos]))), around(c, pos + 1, pos + 1 + after)]),
        el("td", {class: "n"}, String(pos)),
        el("td", {}, c.labels[pos] || "—"), el("td", {class: "n"}, FT.fmt(m.raw[pos], 4)), el("td", {class: "n"}, FT.fmt(m.norm[pos], 3)),
        el("td", {class: "n"}, FT.fmt(m.flip_curve[i + 1], 3)), topAfter(m.mask_tops[i + 1])]);
      tr.addEventListener("click", function () { findToken(pos); });
      tr.tabIndex = 0;  // by keyboard too: Tab reaches a row, Enter or Space finds its token
      tr.addEventListener("keydown", function (ev) {
        if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); findToken(pos, true); }
      });
      return tr;
    });
    box.appendChild(el("div", {class: "scroll"}, el("table", {class: "t masked"}, [el("tr", {}, ["k", "token", "in context", "position", "segment", "R", "normalised", "Δℓ after k", "top after k"].map(function (h, i) {
      return el("th", {class: (i >= 1 && i <= 4 && i !== 3) || i === 8 ? "" : "n"}, h); }))].concat(rows))));
    return box;
  }


  function findToken(pos, keyboard) {  // open its segment if folded, bring it into view, and mark it for a moment
    var t = document.querySelector('#strip .tok[data-p="' + pos + '"]');
    if (!t) return;
    var seg = t.closest("details");
    if (seg && !seg.open) seg.open = true;
    t.scrollIntoView({block: "center"});
    t.classList.add("hl");
    setTimeout(function () { t.classList.remove("hl"); }, 2000);
    if (keyboard) {  // the heatmap takes the focus on that token: the arrow keys go on from it
      var strip = document.getElementById("strip");
      strip.focus({preventScroll: true});
      strip.markToken(t);
    }
  }

  function contrastFrom(pair) {  // the pair search's wording: the model's own top-k, or the --sibling model's
    if (!pair || !pair.contrast_source) return "—";
    var who = pair.contrast_source === "helper" ? "the sibling model's top-k" : pair.contrast_source === "model" ? "the model's own top-k" : pair.contrast_source;
    return pair.contrast_rank === null || pair.contrast_rank === undefined ? who : who + ", rank " + pair.contrast_rank + " (1: its best token after the wrong one)";
  }

  function methodsTable(c) {
    var rows = methodsOf(c).map(function (m) {
      var r = c.methods[m];
      return el("tr", {}, [el("td", {}, m), el("td", {class: "n"}, kLabel(r)),
                           el("td", {class: "n"}, FT.fmt(r.raw.reduce(function (a, b) { return a + (b || 0); }, 0), 4))]);
    });
    return el("div", {}, [el("table", {class: "t"}, [el("tr", {}, [el("th", {}, "method"), el("th", {class: "n"}, "k*"),
                                                  el("th", {class: "n"}, "Σ input R")])].concat(rows)),
                          el("p", {class: "note"}, c.sum_note + " (Δℓ = " + FT.fmt(c.delta_logit, 4) + ").")]);
  }

  // the chosen method's relevance summed per segment, largest |Σ R| first, as `failtrace show --case` prints it (the
  // stored sums keep special token ids in `special`, said so)
  function segmentsTable(c, method) {
    var sums = c.methods[method].segment_relevance || {};
    var count = {};
    c.labels.forEach(function (l) { count[l] = (count[l] || 0) + 1; });
    var rows = Object.keys(sums).sort(function (a, b) { return Math.abs(sums[b]) - Math.abs(sums[a]) || (a < b ? -1 : 1); })
      .map(function (seg) {
        var said = c.relevant_segments.indexOf(seg) >= 0 ? " (relevant)" : seg === "special" ? " (chat template and special ids)" : "";
        var colour = FT.meta.colors.segments[seg] || FT.meta.colors.other_segment;
        return el("tr", {"data-seg": seg}, [el("td", {}, [el("span", {class: "swatch", style: "background:" + colour}), seg + said]),
                                            el("td", {class: "n"}, String(count[seg] || 0)), el("td", {class: "n"}, FT.fmt(sums[seg], 4))]);
      });
    if (!rows.length) return null;
    return el("div", {id: "segments"}, [el("h3", {}, method + " relevance by segment"),
      el("table", {class: "t"}, [el("tr", {}, [el("th", {}, "segment"), el("th", {class: "n"}, "tokens"),
                                               el("th", {class: "n"}, "Σ R")])].concat(rows))]);
  }

  // the evidence in words (views/verdicts.py: the same sentence as failtrace show and the report)
  function why(text, lead) {
    if (!text) return null;
    return el("p", {class: "why"}, lead + text.charAt(0).toUpperCase() + text.slice(1) + ".");
  }

  function labels(c) {
    var col = FT.meta.colors, o = c.override;
    return el("div", {}, [
      el("h3", {}, ["Category ", FT.badge(c.effective_category, col.categories),
                    o ? el("span", {class: "muted"}, " (override of " + (c.category || "—") + ": " + o.reason + ")") : null]),
      why(c.why.category, o ? "Computed: " : ""),
      el("div", {class: "ev", html: c.evidence_html.category_evidence || "<em>no evidence</em>"}),
      el("h3", {}, ["Pattern ", FT.badge(c.pattern, col.patterns)]),
      why(c.why.pattern, ""),
      el("div", {class: "ev", html: c.evidence_html.pattern_evidence || "<em>no evidence</em>"}),
      el("details", {}, [el("summary", {}, "Graph summary"),
                         el("div", {class: "ev", html: c.evidence_html.graph_summary || "<em>none</em>"})])]);
  }

  FT.views.case = function (view, params, id) {
    return FT.api("/api/cases/" + encodeURIComponent(id)).then(paint, function (e) {
      return FT.followWholeId(e, "case", params, function (whole) { return FT.views.case(view, params, whole); });
    });
    function paint(c) {
      var ms = methodsOf(c), method = params.get("method"), asked = null;
      if (!Object.prototype.hasOwnProperty.call(c.methods, method || "")) {  // none, or one this case lacks: the
        method = ms.indexOf("attnlrp") >= 0 ? "attnlrp" : ms[0];             // default, and the URL says which
        if (params.has("method")) { asked = params.get("method"); params.set("method", method); FT.go("case", id, params, true); }
      }
      FT.crumb([el("a", {href: "#/case/" + id}, "case " + c.item_id)]);  // where we are; the graph is a link below
      view.textContent = "";
      var buttons = el("div", {class: "methods", id: "methods"}, ["method: "].concat(ms.map(function (m) {
        var b = el("button", {type: "button", "data-method": m, "aria-pressed": m === method ? "true" : "false",
                              disabled: !c.methods[m].drawable}, m);
        b.addEventListener("click", function () { var p = new URLSearchParams(params.toString()); p.set("method", m); FT.go("case", id, p); });
        return b;
      })).concat(c.has_graph ? [el("a", {href: "#/graph/" + id, id: "to-graph", class: "to-graph"},
                                   "attribution graph →")] : []));
      var kv = [["item", c.item_id], ["benchmark", c.benchmark], ["model", c.model], ["verdict", c.verdict ? c.verdict.status : "—"],
                ["Δℓ", FT.fmt(c.delta_logit, 4)], ["context tokens", c.tokens.length + " (" + c.prompt_length + " prompt)"],
                ["k* (" + method + ")", kLabel(c.methods[method])],
                ["contrast from", contrastFrom(c.pair)]];
      if (asked !== null)  // a hand-edited or old link's method: said, not silently replaced
        view.appendChild(el("p", {class: "note err", id: "method-note", role: "status"}, "this case has no method " +
          FT.quoted(FT.clip(asked, 60)) + " (it has " + ms.join(", ") + "): showing " + method));
      if (c.current && !c.current.is_current) {  // an old link: say which case the other views show instead
        view.appendChild(el("p", {class: "stale", id: "stale", role: "status"}, [
          "This case is from an older analysis of its pair run. status, the report and failtrace show use the current one",
          c.current.case_id ? el("span", {}, [": ", el("a", {href: "#/case/" + c.current.case_id},
                                                       "case " + c.current.case_id.slice(0, 12) + " \u2192")])
                            : ", which has no case of this item",
          ". A category override or a contrast pick made here would never be seen; accept and reject apply to the pair."]));
      }
      view.appendChild(el("section", {class: "block"}, [
        el("h2", {}, ["Why ", el("span", {class: "pill tgt"}, FT.shown(c.target.text)), " rather than ",
                      el("span", {class: "pill ctr"}, FT.shown(c.contrast.text)), "?"]),
        el("div", {class: "kv"}, kv.map(function (p) { return el("div", {}, [el("span", {class: "k"}, p[0]), el("b", {}, String(p[1]))]); })),
        // what the model wrote, the checker's reason, the answer with the contrast forced (as the report and show)
        c.answers.length ? el("dl", {class: "answers", id: "answers"}, [].concat.apply([], c.answers.map(function (a) {
          return [el("dt", {}, a[0]), el("dd", {}, [el("div", {class: "text"}, a[1]),  // the note stays in view
                                                    a[2] ? el("span", {class: "cut"}, a[2]) : null])]; }))) : null,
        c.notes.length ? el("p", {class: "note"}, c.notes.join(" · ")) : null,
        buttons,
        el("div", {class: "legend"}, [el("span", {}, "supports contrast"), el("span", {class: "grad"}), el("span", {}, "supports target"),
                                      el("span", {}, "grey = special token id · boxes = segments (click to fold; \u2018special\u2019 = the chat template\u2019s own text)")])
      ].concat(strip(c, method, params))));
      view.appendChild(maskedTokens(c, method));
      ftOpenAtPrediction(document.getElementById("strip"));  // strip.js: a long context opens at the prediction
      view.appendChild(el("section", {class: "block grid2"}, [
        el("div", {}, [el("h3", {}, "Masking flip curves"), el("p", {class: "note"},
          "Δℓ after masking each method's top-k tokens (" + (c.masking ? c.masking.rule : "") +
          (c.masking && c.masking.skip_template ? "; never the chat template's own text" : "") +
          "); below 0 the prediction flips. Bold: " + method + "."),
          curves(c, method), curveLegend(c, method),
          methodsTable(c), segmentsTable(c, method)]),
        el("div", {}, [FT.views.alternativesBox(c), labels(c)])]));
      if (FT.meta.has_comparisons) view.appendChild(FT.views.compareSection(c));
      view.appendChild(FT.views.reviewBox(c));
    }
  };
})(FT);
