/* One item of a collection run, for a row without a case: the prompt (a chat prompt as its messages), the
   completion, the checker's verdict and reasons, and each pair with a link to its case. Drawn for a person: text is
   shown as text (whitespace kept), never as JSON with escaped line breaks.
   State in the URL: #/item?run_id=<collection run>&item_id=<item> */
(function (FT) {
  "use strict";
  var el = FT.el;

  function pretty(x) {  // a value of a shape this page does not know: still shown whole, indented
    return typeof x === "string" ? x : JSON.stringify(x, null, 2);
  }

  function isMessages(p) {  // a chat prompt: [{role, content}, ...]
    return Array.isArray(p) && p.length > 0 && p.every(function (m) {
      return m && typeof m === "object" && !Array.isArray(m) && "content" in m;
    });
  }

  function prompt(p) {
    if (p === null || p === undefined) return el("p", {class: "muted", id: "prompt"}, "not stored");
    if (!isMessages(p)) return el("pre", {class: "strip", id: "prompt"}, pretty(p));
    return el("div", {class: "msgs", id: "prompt"}, p.map(function (m, i) {
      var role = m.role === undefined || m.role === null ? "message" : String(m.role);
      var extra = Object.keys(m).filter(function (k) { return k !== "role" && k !== "content"; });
      return el("div", {class: "msg", "data-role": role}, [
        el("div", {class: "role"}, [role, el("span", {class: "muted"}, " · message " + (i + 1) + " of " + p.length)]),
        el("pre", {class: "strip"}, pretty(m.content === null ? "" : m.content)),
        // any other field of the message (a name, tool calls) is kept, as it is
        extra.length ? el("pre", {class: "note"}, pretty(extra.reduce(function (o, k) { o[k] = m[k]; return o; }, {})))
          : null]);
    }));
  }

  function reasons(it) {
    var r = it.reasons;
    if (Array.isArray(r)) {
      if (!r.length) return el("p", {class: "muted", id: "reasons"}, "no reasons given");
      return el("ul", {class: "reasons", id: "reasons"}, r.map(function (x) { return el("li", {}, pretty(x)); }));
    }
    if (r === null || r === undefined || r === "") return el("p", {class: "muted", id: "reasons"}, "no reasons given");
    return el("pre", {class: "note", id: "reasons"}, pretty(r));
  }

  function noPair(it) {
    var s = it.status;
    return el("p", {class: "muted", id: "no-pair"}, s === "pass" ? "no pair (the item passed)"
      : s === "fail" ? "not searched yet: no pair run has looked for this failure's first wrong token"
      : "no pair (only failures are searched; the verdict is " + s + ")");
  }


  function pairBlock(p, i, itemId) {
    var run = (FT.meta.pair_runs || {})[p.pair_run_id], said = FT.meta.pair_status_text[p.status];
    var rows = [
      ["pair run", [el("code", {}, p.pair_run_id), run ? el("span", {class: "muted"}, " · " + run.settings +  // as the facet
                                                              (run.collection ? " · " + run.collection : "")) : null]],
      ["status", said ? [el("b", {}, said[0]), el("span", {class: "muted"}, " — " + said[1])] : p.status || "—"],
      ["reason", p.reason || "—"],
      ["position", p.position === null || p.position === undefined ? "—" : String(p.position)],
      ["target → contrast", el("span", {class: "tx"}, FT.quoted(p.target_text) + " → " + FT.quoted(p.contrast_text))],
      ["Δℓ", FT.fmt(p.delta_logit, 4)],
      ["case", p.case_id ? el("a", {href: "#/case/" + p.case_id, class: "to-case"}, "open case " +
                              p.case_id.slice(0, 12) + " →") : el("span", {class: "muted"}, "none (not analysed)")]];
    var d = p.decision;  // the newest accept or reject: the decision in force, as the case page and `show` name it
    if (p.reviewable) rows.push(["review", d ? FT.decisionSaid(d, true, !!p.case_id) : el("span", {class: "muted"}, "none yet")]);
    return el("div", {class: "pair-block"}, [
      el("table", {class: "t pair", "data-pair-run": p.pair_run_id, "data-status": p.status},
         rows.map(function (r) { return el("tr", {}, [el("th", {scope: "row"}, r[0]), el("td", {}, r[1])]); })),
      p.reviewable && !p.case_id && FT.meta.review ? decideForm(p, i, itemId) : null]);
  }

  /* accept or reject a pair that has no case (a weak preference, or a pair not analysed yet): a case's pair is
     reviewed on its case page, beside its evidence */
  function decideForm(p, i, itemId) {
    var comment = el("textarea", {id: "rv-comment-" + i, maxlength: 2000, placeholder: "comment (optional)",
                                  "aria-label": "review comment for pair run " + p.pair_run_id.slice(0, 12)});
    var status = "rv-status-" + i;
    function decide(d) {
      return function () {
        FT.write(function () {
          return FT.post("/api/reviews", {pair_run_id: p.pair_run_id, item_id: itemId, decision: d,
                                          comment: comment.value});
        }, status, "saved: pair " + d + "ed");
      };
    }
    return el("form", {class: "rv"}, [comment,
      el("button", {type: "button", id: "rv-accept-" + i, class: "write", onclick: decide("accept")}, "accept pair"),
      el("button", {type: "button", id: "rv-reject-" + i, class: "write", onclick: decide("reject")}, "reject pair"),
      el("span", {id: status, class: "muted", "aria-live": "polite"})]);
  }

  FT.views.item = function (view, params) {
    return FT.api("/api/item?" + new URLSearchParams({run_id: params.get("run_id") || "",
                                                      item_id: params.get("item_id") || ""}))
      .then(function (it) {
        FT.crumb([el("span", {}, "item " + it.item_id)]);
        view.textContent = "";
        var kv = [["benchmark", it.benchmark], ["model", it.model], ["verdict", it.status],
                  ["finish", it.finish_reason || "—"], ["answer tokens", it.n_tokens === null ? "—" : it.n_tokens],
                  ["collection run", it.run_id]];
        view.appendChild(el("section", {class: "block"}, [
          el("h2", {}, "Item " + it.item_id),
          el("div", {class: "kv"}, kv.map(function (p) {
            return el("div", {}, [el("span", {class: "k"}, p[0]), el("b", {}, String(p[1]))]); })),
          el("h3", {}, "Prompt"), prompt(it.prompt),
          el("h3", {}, "Completion"), el("pre", {class: "strip", id: "completion"}, it.completion || ""),
          el("h3", {}, ["Checker: ", el("b", {}, it.status)]), reasons(it),
          el("h3", {}, "Pairs"),
          it.pairs && it.pairs.length ? el("div", {class: "pairs", id: "pairs"}, it.pairs.map(function (p, i) { return pairBlock(p, i, it.item_id); })) : noPair(it)]));
      });
  };
})(FT);
