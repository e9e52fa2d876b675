/* The cases table (landing page): facets with counts, Δℓ / k* ranges, item search, sortable columns, server-side
   paging. The whole state is the URL hash (#/cases?pair_status=clean&sort=delta_logit&desc=1&offset=50). */
(function (FT) {
  "use strict";
  var el = FT.el;
  var COLS = [["item_id", "item"], ["benchmark", "benchmark"], ["model", "model"], ["verdict", "verdict"],
              ["pair_status", "pair"], ["target_text", "target"], ["contrast_text", "contrast"],
              ["delta_logit", "Δℓ"], ["k_star", "k*"], ["category", "category"], ["pattern", "pattern"],
              ["n_tokens", "answer tokens", "answer tokens (the whole completion; a case page counts its context)"]];
  // [min key, max key, label, input attributes]: the API's bounds (k* a whole number of tokens, Δℓ within ±1e9)
  var RANGES = [["dl_min", "dl_max", "Δℓ range", {step: "any", min: "-1e9", max: "1e9"}],
                ["k_min", "k_max", "k* (attnlrp)", {step: "1", min: "0", max: "100000"}]];
  var SEARCH_MOST = 200;  // the API's longest search text (api.py _TEXT)
  var PAGE = 50;

  function update(params, changes) {  // a new view state: any filter change goes back to the first page
    var p = new URLSearchParams(params.toString());
    Object.keys(changes).forEach(function (k) {
      var v = changes[k];
      p.delete(k);
      [].concat(v === null || v === undefined || v === "" ? [] : v).forEach(function (x) { p.append(k, x); });
    });
    if (!("offset" in changes)) p.delete("offset");
    FT.go("cases", "", p);
  }

  function facetBox(name, values, params) {
    var chosen = params.getAll(name), box = el("div", {class: "facet", "data-facet": name});
    box.appendChild(el("h4", {text: name.replace("_", " ")}));
    values.forEach(function (f) {
      var cb = el("input", {type: "checkbox", value: f.value, "data-facet": name,
                            checked: chosen.indexOf(f.value) >= 0});
      cb.addEventListener("change", function () {
        var now = params.getAll(name).filter(function (v) { return v !== f.value; });
        if (cb.checked) now.push(f.value);
        var ch = {}; ch[name] = now; update(params, ch);
      });
      // a pair run shows its id cut short and, on hover, every setting that gave it that id (as `failtrace status`);
      // a pair status its label and, on hover, its meaning (as the report and `failtrace status` word them); a
      // category or pattern its name and, on hover, the paper's name for it and its meaning
      var run = name === "pair_run" ? (FT.meta.pair_runs || {})[f.value] : undefined;
      var runText = run === undefined ? "" : run.settings + (run.collection ? " · " + run.collection : "");
      var said = name === "pair_status" ? FT.meta.pair_status_text[f.value] : undefined;
      var named = name === "category" ? FT.meta.category_text[f.value]
        : name === "pattern" ? FT.meta.pattern_text[f.value] : undefined;
      box.appendChild(el("label", {title: run !== undefined ? f.value + "  " + runText : said ? said[1]
                                          : named ? named[0] + ": " + named[1] : null},
                         [cb, el("span", {}, run !== undefined ? f.value.slice(0, 10) + " · " + runText
                                                 : said ? said[0] : f.value),
                          el("span", {class: "c"}, String(f.count))]));
    });
    return box;
  }

  // a range bound the API would refuse is said beside the filters and not sent (the whole table used to give way to
  // one red line); a number too large for the browser (Δℓ min 1e400) was dropped without a word
  function refusal(i, what, attrs) {
    var v = i.validity;
    if (v.valid) return null;
    return what + ": " + (v.badInput ? "not a number this filter can use (too large, or mistyped)"
      : (v.stepMismatch ? "a whole number" : "between " + attrs.min + " and " + attrs.max) + ", not " + i.value) +
      "; not applied";
  }

  function rangeBox(r, params) {
    function input(key, ph) {
      var i = el("input", Object.assign({type: "number", placeholder: ph, value: params.get(key) || "", id: key,
                                         "aria-label": r[2].replace(" range", "") + " " + ph}, r[3]));
      function commit() {  // on change, and on Enter or leaving the box: a number the browser cannot read
        var no = refusal(i, r[2].replace(/ range| \(.*/, "") + " " + ph, r[3]);  // (1e400) leaves the value "", so
        say(no);                                                                  // no change event comes for it
        var v = i.value === "" ? null : String(i.valueAsNumber);
        if (no || v === params.get(key)) return;
        var ch = {}; ch[key] = v; update(params, ch);
      }
      i.addEventListener("change", commit);
      i.addEventListener("blur", commit);
      i.addEventListener("keydown", function (ev) { if (ev.key === "Enter") commit(); });
      return i;
    }
    return el("div", {}, [el("h4", {text: r[2]}), el("div", {class: "range"}, [input(r[0], "min"), input(r[1], "max")])]);
  }

  function say(text) {  // the filters' own error line (what was refused, and why); the table stays
    var p = document.getElementById("filter-error");
    if (p) { p.textContent = text || ""; p.hidden = !text; }
  }

  function sidebar(data, params, refused) {
    var side = el("aside", {class: "facets"});
    side.appendChild(el("p", {class: "err", id: "filter-error", hidden: !refused}, refused || ""));
    var search = el("input", {type: "search", id: "search", placeholder: "item id contains…", value: params.get("q") || "",
                              maxlength: SEARCH_MOST, "aria-label": "search: item id contains"});
    search.addEventListener("change", function () { update(params, {q: search.value}); });
    side.appendChild(el("h4", {text: "search"})); side.appendChild(search);
    // on top, so it stays in reach however long the facet lists grow
    side.appendChild(el("button", {type: "button", id: "clear", onclick: function () { FT.go("cases", "", null); }},
                        "clear filters"));
    RANGES.forEach(function (r) { side.appendChild(rangeBox(r, params)); });
    FT.meta.facets.forEach(function (name) { side.appendChild(facetBox(name, data.facets[name] || [], params)); });
    return side;
  }

  // benchmark and model, when every row of the filtered table has one and the same: said once above the table, and
  // their columns left out (a one-model store's table needed a sideways scroll at 800 px for two constant columns)
  var FOLDABLE = ["benchmark", "model"];
  function uniform(data) {
    var same = {};
    FOLDABLE.forEach(function (name) {
      var seen = (data.facets[name] || []).filter(function (f) { return f.count > 0; });
      if (data.total > 0 && seen.length === 1 && seen[0].count === data.total && seen[0].value !== "(none)")
        same[name] = seen[0].value;
    });
    return same;
  }
  function shownCols(same) { return COLS.filter(function (c) { return !(c[0] in same); }); }

  function header(params, same) {
    var sort = params.get("sort") || "item_id", desc = params.get("desc") === "1";
    return el("tr", {}, shownCols(same).map(function (c) {
      var on = c[0] === sort;
      return el("th", {class: "s" + (on ? " on" : "") + (c[0] === "delta_logit" || c[0] === "k_star" ||
                       c[0] === "n_tokens" ? " n" : ""), "data-col": c[0], title: "sort by " + (c[2] || c[1]),
                       tabindex: "0", "aria-sort": on ? (desc ? "descending" : "ascending") : null,
                       onclick: function () { update(params, {sort: c[0], desc: on && !desc ? "1" : null}); },
                       onkeydown: activateOnEnter},
                c[1] + (on ? (desc ? " ▼" : " ▲") : ""));
    }));
  }

  function activateOnEnter(ev) {  // rows and sort headers are reachable with Tab and open with Enter or Space
    if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); ev.currentTarget.click(); }
  }

  function kTitle(r) {  // k* says three things: flipped at k, no flip within the curve's K, or no curve at all
    return r.k_star !== null ? "masking the top " + r.k_star + " attnlrp tokens flips it" : r.k_computed
      ? "no flip within the masking curve's K" : r.case_id ? "masking curve not computed" : "no analysed case";
  }

  function row(r, same) {
    var c = FT.meta.colors, said = r.pair_status ? FT.meta.pair_status_text[r.pair_status] : undefined;
    var cells = [el("td", {class: "item"}, r.item_id), el("td", {}, r.benchmark), el("td", {title: r.model},
                 String(r.model).split("/").pop()), el("td", {}, r.verdict), el("td", {title: (said ? said[1] : "") +
                 (r.pair_run_id ? (said ? "; " : "") + "pair run " + r.pair_run_id : "") || null},
                 [said ? said[0] : r.pair_status || "—", r.review === "reject" ? el("span", {class: "rej",
                  title: "a reviewer rejected this pair: export-dpo, finetune, status and the report leave it out"},
                  "rejected") : null]),
                 el("td", {class: "tx"}, FT.quoted(r.target_text)),
                 el("td", {class: "tx"}, FT.quoted(r.contrast_text)),
                 el("td", {class: "n"}, FT.fmt(r.delta_logit)), el("td", {class: "n", title: kTitle(r)}, r.k_star !== null ? String(r.k_star) : r.k_computed ? "none" : "—"),
                 el("td", {class: "nw"}, [FT.badge(r.category, c.categories), r.overridden ? el("span", {class: "muted", title: "overridden by a reviewer"}, " ✎") : null]),
                 el("td", {}, FT.badge(r.pattern, c.patterns)), el("td", {class: "n"}, r.n_tokens === null ? "—" : String(r.n_tokens))];
    cells.forEach(function (td, i) { td.dataset.col = COLS[i][0]; });  // tests and scripts find a cell by its column
    cells = cells.filter(function (td) { return !(td.dataset.col in same); });
    var tr = el("tr", {class: "row" + (r.case_id ? " has-case" : ""), "data-case": r.case_id || "", tabindex: "0",
                       onkeydown: activateOnEnter, title: r.case_id ? "open the case" : "open the item"}, cells);
    tr.addEventListener("click", function () {
      if (r.case_id) FT.go("case", r.case_id, null);
      else FT.go("item", "", new URLSearchParams({run_id: r.run_id, item_id: r.item_id}));
    });
    return tr;
  }

  // A collection run searched by several pair runs has one row per failure and pair run: said above the table
  // while no pair run is picked, so counts that include every pair run are not read as failures.
  function doubled(params) {
    if (params.getAll("pair_run").length) return null;
    var per = {}, runs = FT.meta.pair_runs || {};
    Object.keys(runs).forEach(function (id) { var c = runs[id].collection_run; per[c] = (per[c] || 0) + 1; });
    var n = Math.max.apply(null, [0].concat(Object.keys(per).map(function (c) { return per[c]; })));
    return n > 1 ? el("p", {class: "note", id: "doubled"}, "A collection run here was searched by " + n +
                      " pair runs: each of its failures has a row per pair run. Pick one under pair run.") : null;
  }

  // Past the last page (a hand-edited or old link, or rows gone since): said so, with links to the last and first
  // pages, and "prev" goes to the last page that has rows rather than to the empty page before this one.
  function pager(data, params) {
    var from = data.total ? data.offset + 1 : 0, to = Math.min(data.total, data.offset + data.rows.length);
    var past = data.offset > 0 && !data.rows.length && data.total > 0;
    var last = Math.floor((data.total - 1) / data.limit) * data.limit;
    function to_(off) { return function () { update(params, {offset: off > 0 ? String(off) : null}); }; }
    function link(off) {
      var p = new URLSearchParams(params.toString());
      if (off > 0) p.set("offset", String(off)); else p.delete("offset");
      return "#/cases?" + p.toString();
    }
    var span = data.rows.length ? from + "–" + to : past ? "no rows on this page; " + data.total + " rows in all" : "";
    return el("div", {class: "toolbar"}, [
      el("span", {id: "total"}, data.total + " rows"), el("span", {class: "muted", id: "span"}, span),
      past ? el("a", {id: "last", href: link(last)}, "last page (" + (last + 1) + "–" + data.total + ")") : null,
      past && last > 0 ? el("button", {type: "button", id: "first", onclick: to_(0)}, "first page") : null,
      el("button", {type: "button", id: "prev", disabled: data.offset <= 0,
                    onclick: to_(past ? last : data.offset - data.limit)}, "◀ prev"),
      el("button", {type: "button", id: "next", disabled: data.offset + data.limit >= data.total,
                    onclick: to_(data.offset + data.limit)}, "next ▶")]);
  }

  /* The redraw after a sort, filter or page change replaces every element, so focus fell to <body> and a keyboard
     user started again from the top. The focused control (the sort header, facet box, range or search input used,
     or the one Tab moved to) is named before and focused again after; the facet list keeps its scroll. */
  function focusKey(e, view) {
    if (!e || e === document.body || !view.contains(e)) return null;
    if (e.dataset.col) return 'th[data-col="' + CSS.escape(e.dataset.col) + '"]';
    if (e.matches("input[data-facet]")) return 'input[data-facet="' + CSS.escape(e.dataset.facet) + '"][value="' +
      CSS.escape(e.value) + '"]';
    return e.id ? "#" + CSS.escape(e.id) : null;
  }
  function keepFocus(view) {
    var shown = view.querySelector("table#cases") ? view : null;  // only from the table to the table
    var key = shown && focusKey(document.activeElement, view), side = shown && view.querySelector("aside.facets");
    var top = side ? side.scrollTop : 0;
    return function () {
      var s = view.querySelector("aside.facets"), t = key && view.querySelector(key);
      if (s && top) s.scrollTop = top;
      if (t && !t.disabled) t.focus({preventScroll: true});
    };
  }

  // A parameter the API refuses (a hand-edited link: k_min=2.5, sort=bogus, an unknown category) is said beside the
  // filters, and the table is drawn without it: FastAPI's 422 names each refused parameter in its loc. The controls
  // and the URL drop it too (the k* box kept showing 2.5 above rows it did not filter).
  FT.views.cases = function (view, params) {
    var q = new URLSearchParams(params.toString()), refused = null;
    if (!q.get("limit")) q.set("limit", String(PAGE));
    if (q.get("desc") === "1") q.set("desc", "true");
    function load() { return FT.api("/api/table?" + q.toString()); }
    return load().catch(function (e) {
      var names = e.status === 422 && Array.isArray(e.detail) ? e.detail.map(function (p) {
        return (p && p.loc || []).slice(-1)[0]; }).filter(function (n) { return q.has(n); }) : [];
      if (!names.length) throw e;
      names.forEach(function (n) { q.delete(n); params.delete(n); });
      refused = e.message + " (not applied)";
      return load();
    }).then(function (data) {
      if (refused) FT.go("cases", "", params, true);
      var again = keepFocus(view);
      view.textContent = "";
      var same = uniform(data), names = Object.keys(same);
      var tbl = el("table", {class: "t cases", id: "cases"}, [el("thead", {}, header(params, same)),
                   el("tbody", {}, data.rows.map(function (r) { return row(r, same); }))]);
      var every = names.length ? el("p", {class: "muted", id: "uniform"}, "every row: " + names.map(function (n) {
        return n + " " + same[n]; }).join(" · ")) : null;
      var main = el("div", {}, [doubled(params), pager(data, params), every, el("div", {class: "scroll"}, tbl),
                                data.total ? null : el("p", {class: "muted"}, "no rows match these filters")]);
      view.appendChild(el("div", {class: "layout"}, [sidebar(data, params, refused), main]));
      again();
    });
  };
})(FT);
