/* Across models and checkpoints.
   - FT.views.compareSection(c): on a case page, the same case on every compared model/checkpoint, side by side: one
     column per model with its Δℓ, mapped or not, k*, and its AttnLRP relevance drawn on the case's own tokens
     (aligned by character spans on the server, /api/cases/<id>/compare). Columns scroll together.
   - FT.views.across: #/across?tab=models|checkpoints — Fig. 4–7 drawn as SVG from /api/compare; every point and
     every case line links to its case page. */
(function (FT) {
  "use strict";
  var el = FT.el;
  var GROUP = {corrected: "#16a34a", uncorrected: "#dc2626"}, SPLIT = {trained: "#dc2626", "held-out": "#2563eb", all: "#374151"};
  var PALETTE = ["#0891b2", "#a16207", "#be185d", "#4d7c0f", "#1e40af", "#78716c", "#7c3aed", "#ea580c",
                 "#dc2626", "#16a34a", "#111827", "#0ea5e9"];  // report/figures.py _FALLBACK: the same twelve

  function label(m) { return m.step === null ? m.model : (m.series + " · step " + m.step + (m.split ? " · " + m.split : "")); }

  function column(c, m, i) {
    var a = m.aligned, box = el("div", {class: "strip cmp", "data-col": i});
    var head = el("div", {class: "cmphead"}, [
      el("b", {}, label(m)), m.reference ? el("span", {class: "muted"}, " (this case's model)") : null, el("br"),
      "Δℓ ", el("b", {class: m.corrected ? "fixed" : ""}, FT.fmt(m.delta_logit, 3)),
      m.mapped ? (m.corrected ? el("span", {class: "fixed"}, " corrected") : " not corrected") : el("span", {class: "err"}, " not mapped"),
      m.writes ? el("span", {title: "its top next token here (greedy): the target, the contrast or another"},
                    [" · writes ", el("code", {}, FT.shown(m.writes.text)), " (" + (m.writes.role === "other" ? "neither" : "the " + m.writes.role) + ")"]) : null,
      " · k* " + m.k_label + " · " + m.n_tokens + " tokens",
      a && !a.identical ? el("span", {class: "muted"}, " · " + Math.round(100 * a.matched_chars) + "% of the text aligned") : null]);
    if (!a) {
      box.appendChild(el("p", {class: "muted"}, m.mapped ? "no relevance or token texts stored for this row" :
                         (m.notes.join("; ") || "not mapped: target or contrast is not one token in this model")));
      return el("div", {class: "cmpcol", "data-model": m.model}, [head, box]);
    }
    var frag = document.createDocumentFragment();
    for (var j = 0; j < c.tokens.length; j++) {
      var v = a.values[j], t = document.createElement("span");
      t.className = "tok" + (c.special[j] ? " sp" : "") + (v === null ? " na" : "");
      t.dataset.p = j;
      t.textContent = FT.shown(c.tokens[j]);
      if (v !== null && !c.special[j]) {
        var w = Math.max(-1, Math.min(1, v));
        t.style.cssText = "background:" + FT.mix(w) + ";color:" + FT.ink(w);
      }
      frag.appendChild(t);
    }
    box.appendChild(frag);
    return el("div", {class: "cmpcol", "data-model": m.model}, [head, box]);
  }

  function tipText(c, data, j) {
    var lines = ["pos " + j + " · " + FT.quoted(c.tokens[j])];
    data.models.forEach(function (m) {
      var a = m.aligned, v = a ? a.values[j] : null, s = a ? a.spans[j] : null, own = "";
      if (s && m.other_tokens) own = " ‹" + m.other_tokens.slice(s[0], s[1] + 1).map(FT.shown).join("|") + "›";
      lines.push(label(m) + ": " + (a ? FT.fmt(v, 3) : "—") + own);
    });
    return lines.join("\n");
  }

  // the last case's drawn section: the comparisons never change while the explorer runs, so drawing that case again
  // (a review write redraws the page where it was) reuses it instead of a "loading…" line that moves what is below
  var drawn = null;

  FT.views.compareSection = function (c) {
    if (drawn && drawn.dataset.case === c.case_id) return drawn;
    var sec = el("section", {class: "block", id: "compare", "data-case": c.case_id}, [el("h3", {}, "Across models and checkpoints"),
      el("p", {class: "muted"}, "loading…")]);
    // fetched after the case itself has painted: on a 16k-token case the columns are tens of thousands of spans
    var later = new Promise(function (ok) { requestAnimationFrame(function () { setTimeout(ok, 0); }); });
    later.then(function () { return FT.api("/api/cases/" + encodeURIComponent(c.case_id) + "/compare"); }).then(function (data) {
      sec.textContent = "";
      sec.appendChild(el("h3", {}, "Across models and checkpoints"));
      sec.appendChild(el("p", {class: "note"}, "The same target and contrast re-scored on each model from the same text " +
        "(failtrace compare). Each column is that model's AttnLRP relevance (normalised by its own max |R|) drawn on this " +
        "case's tokens: another tokenisation is aligned by the characters its tokens decode to (relevance spread evenly " +
        "over a token's characters); hatched = text that model did not see (its own chat template differs)."));
      var grid = el("div", {class: "cmpgrid", id: "cmpgrid", style: "grid-template-columns:repeat(" + data.models.length + ",minmax(260px,1fr))"},
                    data.models.map(function (m, i) { return column(c, m, i); }));
      var boxes = [].slice.call(grid.querySelectorAll(".strip.cmp")), syncing = false;
      boxes.forEach(function (b) {
        b.addEventListener("scroll", function () {
          if (syncing) return; syncing = true;
          boxes.forEach(function (o) { if (o !== b) o.scrollTop = b.scrollTop; });
          syncing = false;
        });
      });
      grid.addEventListener("mouseover", function (ev) {
        var t = ev.target.closest ? ev.target.closest(".tok") : null;
        grid.querySelectorAll(".tok.hl").forEach(function (x) { x.classList.remove("hl"); });
        if (!t) { FT.tip(ev, null); return; }
        grid.querySelectorAll('.tok[data-p="' + t.dataset.p + '"]').forEach(function (x) { x.classList.add("hl"); });
        FT.tip(ev, tipText(c, data, +t.dataset.p));
      });
      grid.addEventListener("mouseleave", function (ev) { FT.tip(ev, null); });
      sec.appendChild(grid);
      sec.appendChild(el("p", {}, el("a", {href: "#/across"}, "all cases across models and checkpoints (Fig. 4–7) →")));
      drawn = sec;
    }, function (e) { sec.textContent = ""; if (e.status !== 404) sec.appendChild(el("p", {class: "err"}, e.message)); else sec.style.display = "none"; });
    return sec;
  };

  /* --- SVG charts --- */
  function sv(tag, attrs, children) {  // an SVG element (FT.el makes HTML ones for a, title)
    var e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    Object.keys(attrs || {}).forEach(function (k) { if (attrs[k] !== null && attrs[k] !== undefined) e.setAttribute(k, attrs[k]); });
    [].concat(children === undefined ? [] : children).forEach(function (c) {
      if (c !== null && c !== undefined) e.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return e;
  }
  /* --------------------------------------------------------------------------------------------- */
  function ticks(lo, hi, n) {
    var step = Math.pow(10, Math.floor(Math.log10((hi - lo) / n || 1))), out = [];
    [1, 2, 5, 10].some(function (m) { if ((hi - lo) / (step * m) <= n) { step *= m; return true; } return false; });
    for (var v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(+v.toFixed(10));
    return out;
  }

  function chart(W, H, xr, yr, xlab, ylab, noXTicks, intX) {  // an SVG with axes; returns {svg, X, Y}
    var L = 52, R = 12, T = 12, B = 38;
    var X = function (x) { return L + (W - L - R) * (x - xr[0]) / (xr[1] - xr[0] || 1); };
    var Y = function (y) { return T + (H - T - B) * (yr[1] - y) / (yr[1] - yr[0] || 1); };
    var svg = sv("svg", {width: W, height: H, viewBox: "0 0 " + W + " " + H, class: "chart"});
    // intX: training steps are whole numbers, so no 0.25 or 0.5 tick on their axis
    (noXTicks ? [] : ticks(xr[0], xr[1], 6).filter(function (t) { return !intX || Number.isInteger(t); })).forEach(function (t) {
      svg.appendChild(sv("line", {x1: X(t), x2: X(t), y1: T, y2: H - B, stroke: "#eef0f3"}));
      svg.appendChild(sv("text", {x: X(t), y: H - B + 14, "text-anchor": "middle"}, String(t)));
    });
    ticks(yr[0], yr[1], 6).forEach(function (t) {
      svg.appendChild(sv("line", {x1: L, x2: W - R, y1: Y(t), y2: Y(t), stroke: "#eef0f3"}));
      svg.appendChild(sv("text", {x: L - 5, y: Y(t) + 4, "text-anchor": "end"}, String(t)));
    });
    svg.appendChild(sv("text", {x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle", class: "axl"}, xlab));
    svg.appendChild(sv("text", {x: 12, y: (T + H - B) / 2, transform: "rotate(-90 12 " + (T + H - B) / 2 + ")", "text-anchor": "middle", class: "axl"}, ylab));
    return {svg: svg, X: X, Y: Y, L: L, R: R, T: T, B: B, W: W, H: H};
  }

  function range(vals, pad) {
    var lo = Math.min.apply(null, vals.concat([0])), hi = Math.max.apply(null, vals.concat([0])), p = (hi - lo || 1) * (pad || 0.08);
    return [lo - p, hi + p];
  }

  function point(cx, cy, colour, href, title, cls) {
    var a = sv("a", {href: href, class: cls || "pt"}, sv("circle", {cx: cx, cy: cy, r: 4.5, fill: colour, stroke: "#fff", "stroke-width": 0.8}));
    a.appendChild(sv("title", {}, title));
    return a;
  }

  function fig4(data) {  // one panel per other model
    var models = data.scatter.map(function (p) { return p.model; }).filter(function (v, i, a) { return a.indexOf(v) === i; });
    return models.map(function (m) {
      var pts = data.scatter.filter(function (p) { return p.model === m; });
      var r = range(pts.map(function (p) { return p.dl_reference; }).concat(pts.map(function (p) { return p.dl_model; })));
      var ch = chart(420, 400, r, r, "Δℓ in " + pts[0].reference_model, "Δℓ in " + m), X = ch.X, Y = ch.Y, s = ch.svg;
      s.insertBefore(sv("rect", {x: ch.L, y: Y(0), width: X(r[1]) - ch.L, height: Y(r[0]) - Y(0), fill: GROUP.corrected, "fill-opacity": 0.08}), s.firstChild);
      s.insertBefore(sv("rect", {x: ch.L, y: ch.T, width: X(r[1]) - ch.L, height: Y(0) - ch.T, fill: GROUP.uncorrected, "fill-opacity": 0.06}), s.firstChild);
      s.appendChild(sv("line", {x1: X(r[0]), y1: Y(r[0]), x2: X(r[1]), y2: Y(r[1]), stroke: "#6b7280", "stroke-dasharray": "5 4"}));
      s.appendChild(sv("line", {x1: ch.L, x2: ch.W - ch.R, y1: Y(0), y2: Y(0), stroke: "#111"}));
      s.appendChild(sv("text", {x: ch.L + 4, y: Y(r[0]) - 5, fill: "#15803d"}, "corrected (Δℓ < 0)"));
      s.appendChild(sv("text", {x: ch.L + 4, y: ch.T + 12, fill: "#b91c1c"}, "uncorrected"));
      pts.forEach(function (p) {
        s.appendChild(point(X(p.dl_reference), Y(p.dl_model), p.corrected ? GROUP.corrected : GROUP.uncorrected,
          "#/case/" + encodeURIComponent(p.case_id), p.item_id + ": Δℓ " + FT.fmt(p.dl_reference, 2) + " → " + FT.fmt(p.dl_model, 2)));
      });
      var fixed = pts.filter(function (p) { return p.corrected; }).length;
      var known = pts.filter(function (p) { return p.corrected && p.writes; }), writes = known.filter(function (p) { return p.writes === "contrast"; }).length;
      var wrote = known.length ? " (of those whose top token was recorded, " + writes + " of " + known.length + " write the contrast)" : "";
      return el("figure", {class: "fig", "data-fig": "4", "data-model": m}, [el("div", {class: "ftitle"}, "Fig. 4 — Δℓ: " + pts[0].reference_model + " vs " + m), s, el("figcaption", {},
        "Fig. 4 — " + m + ": " + fixed + " of " + pts.length + " cases corrected" + wrote + (data.unmapped[m] ? ", " + data.unmapped[m] + " not mapped" : "") + ". Dashed: y = x. Click a point to open its case.")]);
    });
  }

  function bars(rows, groups, keyOf, colourOf, title, caption, fig) {  // grouped bars: segments × groups
    var segs = rows.map(function (r) { return r.segment; }).filter(function (v, i, a) { return a.indexOf(v) === i; });
    var yr = range(rows.map(function (r) { return r.mean_share; }), 0.1);
    var W = Math.max(420, 90 * segs.length + 120), ch = chart(W, 320, [-0.5, segs.length - 0.5], yr, "segment", "mean R_seg / Σ|R_seg|", true), s = ch.svg;
    var bw = 0.8 / groups.length;
    segs.forEach(function (seg, si) {
      s.appendChild(sv("text", {x: ch.X(si), y: ch.H - ch.B + 14, "text-anchor": "middle"}, seg));
      groups.forEach(function (g, gi) {
        var r = rows.filter(function (x) { return x.segment === seg && keyOf(x) === g.key; })[0];
        if (!r) return;
        var x0 = ch.X(si - 0.4 + bw * gi), x1 = ch.X(si - 0.4 + bw * (gi + 1)), y0 = ch.Y(0), y1 = ch.Y(r.mean_share);
        var b = sv("rect", {x: x0 + 1, width: x1 - x0 - 2, y: Math.min(y0, y1), height: Math.abs(y1 - y0), fill: colourOf(g), "fill-opacity": g.light ? 0.5 : 0.95});
        b.appendChild(sv("title", {}, g.name + " · " + seg + ": " + FT.fmt(r.mean_share, 3) + " (n=" + r.cases + ")"));
        s.appendChild(b);
      });
    });
    s.appendChild(sv("line", {x1: ch.L, x2: ch.W - ch.R, y1: ch.Y(0), y2: ch.Y(0), stroke: "#111"}));
    var legend = el("div", {class: "legend"}, groups.map(function (g) {
      return el("span", {}, [el("span", {class: "sw", style: "background:" + colourOf(g) + ";opacity:" + (g.light ? 0.5 : 1)}), g.name]); }));
    return el("figure", {class: "fig", "data-fig": fig}, [el("div", {class: "ftitle"}, title), s, legend, el("figcaption", {}, caption)]);
  }

  function fig5(data) {
    var models = data.segments.map(function (r) { return r.model; }).filter(function (v, i, a) { return a.indexOf(v) === i; });
    return models.map(function (m) {
      var rows = data.segments.filter(function (r) { return r.model === m; }), groups = [];
      ["reference", "model"].forEach(function (role) { ["corrected", "uncorrected"].forEach(function (g) {
        var r = rows.filter(function (x) { return x.role === role && x.group === g; })[0];
        if (r) groups.push({key: role + "/" + g, name: r.shown_model + ", " + g + " (n=" + r.cases + ")", group: g, light: role === "reference"});
      }); });
      return bars(rows, groups, function (r) { return r.role + "/" + r.group; }, function (g) { return GROUP[g.group]; },
        "Fig. 5 — segment share, split by " + m, "Pale: the case's own model; strong: " + m + ". Green: cases " + m + " corrects.", "5");
    });
  }

  function uniq(xs) { return xs.filter(function (v, i, a) { return a.indexOf(v) === i; }); }
  function splits(rows) {  // trained, held-out, then any other split present
    var order = Object.keys(SPLIT);
    return uniq(rows.map(function (r) { return r.split; })).sort(function (a, b) {
      var ia = order.indexOf(a), ib = order.indexOf(b); return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || (a < b ? -1 : 1); });
  }

  function fig6(data) {
    return uniq(data.checkpoints.map(function (p) { return p.series; })).map(function (series) {
      var pts = data.checkpoints.filter(function (p) { return p.series === series; });
      var ch = chart(560, 380, range(pts.map(function (p) { return p.step; }), 0.04), range(pts.map(function (p) { return p.delta_logit; })),
                     "training step", "Δℓ = ℓ(target) − ℓ(contrast)", false, true), s = ch.svg;
      s.appendChild(sv("line", {x1: ch.L, x2: ch.W - ch.R, y1: ch.Y(0), y2: ch.Y(0), stroke: "#111"}));
      splits(pts).forEach(function (split) {
        var col = SPLIT[split] || "#374151";
        uniq(pts.filter(function (p) { return p.split === split; }).map(function (p) { return p.case_id; })).forEach(function (cid) {
          var line = pts.filter(function (p) { return p.case_id === cid && p.split === split; }).sort(function (a, b) { return a.step - b.step; });
          var a = sv("a", {href: "#/case/" + encodeURIComponent(cid), class: "cline"}, sv("polyline", {
            points: line.map(function (p) { return ch.X(p.step) + "," + ch.Y(p.delta_logit); }).join(" "), fill: "none", stroke: col, "stroke-width": 1.2, "stroke-opacity": 0.35}));
          a.appendChild(sv("title", {}, line[0].item_id + " (" + split + ")"));
          s.appendChild(a);
        });
        var med = data.checkpoint_summary.filter(function (r) { return r.series === series && r.split === split; });
        s.appendChild(sv("polyline", {points: med.map(function (r) { return ch.X(r.step) + "," + ch.Y(r.median_delta_logit); }).join(" "),
                                      fill: "none", stroke: col, "stroke-width": 3.2, class: "median", "data-split": split}));
      });
      var cap = splits(pts).map(function (split) {
        var med = data.checkpoint_summary.filter(function (r) { return r.series === series && r.split === split; }), last = med[med.length - 1];
        return split + ": " + last.corrected + " of " + last.cases + " corrected at step " + last.step;
      }).join("; ");
      return el("figure", {class: "fig", "data-fig": "6"}, [el("div", {class: "ftitle"}, "Fig. 6 — " + series + ": Δℓ per checkpoint"), s,
        el("div", {class: "legend"}, splits(pts).map(function (k) { return el("span", {}, [el("span", {class: "sw", style: "background:" + SPLIT[k]}), k]); })),
        el("figcaption", {}, "Thin: one case (click to open it); bold: median per split. " + cap + ".")]);
    });
  }

  function fig7(data) {
    var rows = data.checkpoint_segments, segs = uniq(rows.map(function (r) { return r.segment; }));
    var panels = [];
    uniq(rows.map(function (r) { return r.series; })).forEach(function (se) {
      splits(rows.filter(function (r) { return r.series === se; })).forEach(function (sp) { panels.push(se + "\u0000" + sp); }); });
    return panels.map(function (key) {
      var parts = key.split("\u0000"), mine = rows.filter(function (r) { return r.series === parts[0] && r.split === parts[1]; });
      var ch = chart(460, 320, range(mine.map(function (r) { return r.step; }), 0.04), range(mine.map(function (r) { return r.mean_share; }), 0.1),
                     "training step", "mean R_seg / Σ|R_seg|", false, true), s = ch.svg;
      s.appendChild(sv("line", {x1: ch.L, x2: ch.W - ch.R, y1: ch.Y(0), y2: ch.Y(0), stroke: "#111"}));
      segs.forEach(function (seg, i) {
        var line = mine.filter(function (r) { return r.segment === seg; }).sort(function (a, b) { return a.step - b.step; });
        var pl = sv("polyline", {points: line.map(function (r) { return ch.X(r.step) + "," + ch.Y(r.mean_share); }).join(" "), fill: "none", stroke: PALETTE[i % PALETTE.length], "stroke-width": 2});
        pl.appendChild(sv("title", {}, seg)); s.appendChild(pl);
      });
      return el("figure", {class: "fig", "data-fig": "7"}, [el("div", {class: "ftitle"}, "Fig. 7 — " + parts[0] + " · " + parts[1]), s,
        el("div", {class: "legend"}, segs.map(function (seg, i) { return el("span", {}, [el("span", {class: "sw", style: "background:" + PALETTE[i % PALETTE.length]}), seg]); }))]);
    });
  }

  FT.views.across = function (view, params) {
    return FT.api("/api/compare").then(function (data) {
      var tab = params.get("tab") || (data.scatter.length ? "models" : "checkpoints");
      FT.crumb([el("span", {}, "across models and checkpoints")]);
      view.textContent = "";
      var tabs = el("div", {class: "methods", id: "tabs"}, ["view: "].concat([["models", "Across models (Fig. 4–5)"], ["checkpoints", "Across checkpoints (Fig. 6–7)"]].map(function (t) {
        var b = el("button", {type: "button", "data-tab": t[0], "aria-pressed": t[0] === tab ? "true" : "false"}, t[1]);
        b.addEventListener("click", function () { var p = new URLSearchParams(); p.set("tab", t[0]); FT.go("across", "", p); });
        return b;
      })));
      var body = tab === "models" ? (data.scatter.length ? fig4(data).concat(fig5(data)) : [el("p", {class: "muted"}, "no model comparisons: run failtrace compare --models")])
        : (data.checkpoints.length ? fig6(data).concat(fig7(data)) : [el("p", {class: "muted"}, "no checkpoint comparisons: run failtrace compare --checkpoints")]);
      view.appendChild(el("section", {class: "block", id: "across"}, [el("h2", {}, "Across models and checkpoints"), tabs,
        el("p", {class: "note"}, "Corrected: the other model or checkpoint prefers the contrast (Δℓ < 0). Segment share: R_seg / Σ|R_seg| of AttnLRP relevance over the prompt's own segments (the chat template's text and special ids left out: they differ by model). Same data as the report's Fig. 4–7 (" + data.rows + " comparison rows)."),
        el("div", {class: "figs"}, body)]));
    });
  };
})(FT);
