/* The case page's review parts: the model's top alternatives at the failure point (in review mode, each can be
   picked as the contrast instead) and the review box (the log, the decision in force, accept / reject, category
   override and clear). Drawn by case.js; writes go through FT.write (common.js). */
(function (FT) {
  "use strict";
  var el = FT.el;

  /* The model's top-k next tokens at the failure point (stored by analyse) with Δℓ = ℓ(target) − ℓ(a); in review
     mode each row can be picked as the contrast instead (a 'contrast' review; the case itself is not changed). */
  FT.views.alternativesBox = function (c) {
    var box = el("div", {id: "alternatives"}, [el("h3", {}, "Target vs contrast: the model's top alternatives")]);
    if (!c.alternatives) {
      box.appendChild(el("p", {class: "muted"}, "not recorded for this case (analysed before failtrace kept them): run failtrace analyse on the store again to add them."));
      return box;
    }
    var status = el("span", {id: "alt-status", class: "muted", "aria-live": "polite"});  // read out when it changes
    var comment = el("input", {type: "text", id: "alt-comment", maxlength: 2000, placeholder: "why this contrast (optional)",
                               "aria-label": "why this contrast (optional comment)"});
    var rows = c.alternatives.map(function (a) {
      var role = a.is_target ? el("span", {class: "pill tgt"}, "target") : a.is_contrast ? el("span", {class: "pill ctr"}, "contrast") : "";
      var pick = null;
      if (FT.meta.review && !a.is_target && !a.is_contrast) {
        // a name per button (a screen reader lists them all alike otherwise); the id where two tokens print alike
        var twin = c.alternatives.some(function (b) { return b !== a && FT.shown(b.text) === FT.shown(a.text); });
        pick = el("button", {type: "button", class: "pick write", "data-token": a.token_id,
                             "aria-label": "use " + FT.quoted(a.text) + (twin ? " (id " + a.token_id + ")" : "") +
                               " as contrast"}, "use as contrast");
        pick.addEventListener("click", function () {
          FT.write(function () {
            return FT.post("/api/cases/" + encodeURIComponent(c.case_id) + "/contrast", {contrast_id: a.token_id, comment: comment.value});
          }, "alt-status", "saved: a review names " + FT.quoted(a.text) + " as the better contrast (the review log lists it); " +
             "the case, its contrast and the exported preference data are unchanged");
        });
      }
      return el("tr", {"data-token": a.token_id}, [el("td", {class: "n"}, String(a.rank)), el("td", {class: "tx"}, FT.shown(a.text)),
        el("td", {class: "n"}, String(a.token_id)), el("td", {class: "n"}, FT.fmt(a.logit, 3)), el("td", {class: "n"}, FT.fmt(a.delta_logit, 3)),
        el("td", {}, role), el("td", {}, pick)]);
    });
    var others = c.alternatives.filter(function (a) { return !a.is_contrast; }).length;
    var extra = c.alternatives.some(function (a) { return a.is_contrast && a.rank > others; });  // listed beyond the top
    box.appendChild(el("p", {class: "note"}, "At the failure point, the " + (extra ? others : c.alternatives.length) +
      " highest-logit tokens (rank 0: the target, the model's own choice)" + (extra ? ", and the contrast below them" : "") +
      ". Δℓ = ℓ(target) − ℓ(token): how much the model preferred its wrong token."));
    box.appendChild(el("div", {class: "scroll"}, el("table", {class: "t alts"}, [el("tr", {}, ["rank", "token", "id", "logit", "Δℓ", "", ""].map(function (h, i) {
      return el("th", {class: i && i < 5 && i !== 1 ? "n" : ""}, h); }))].concat(extra ? gapBefore(rows, c.alternatives) : rows))));
    if (FT.meta.review) box.appendChild(el("div", {class: "rv"}, [comment, status]));
    return box;
  };

  function gapBefore(rows, alts) {  // a "⋮" row where the ranks jump from the top to a contrast listed below them
    var out = [];
    rows.forEach(function (r, i) {
      if (i && alts[i].rank > alts[i - 1].rank + 1) out.push(el("tr", {class: "gap"}, [el("td", {class: "n muted"}, "⋮"),
        el("td", {class: "muted", colspan: 6}, (alts[i].rank - alts[i - 1].rank - 1) + " tokens not listed")]));
      out.push(r);
    });
    return out;
  }

  FT.views.reviewBox = function (c) {
    var box = el("section", {class: "block", id: "review"}, [el("h3", {}, "Review")]);
    function when(r) { return String(r.created_at).replace(/\.\d+$/, "") + " UTC"; }  // the server's clock, in UTC
    // the log keeps every decision; the newest accept or reject (API `decision`) is the one in force
    if (c.decision) box.appendChild(el("p", {id: "rv-in-force"}, FT.decisionSaid(c.decision, false, true)));
    var newerCategory = false;  // reviews come newest first: an override after the first is superseded by it
    (c.reviews || []).forEach(function (r) {
      var superseded = ((r.decision === "accept" || r.decision === "reject") && r.review_id !== c.decision.review_id) ||
                       (r.decision === "category" && newerCategory);
      if (r.decision === "category") newerCategory = true;
      var back = r.decision === "category" && r.category === c.category;  // an override back to the computed one
      box.appendChild(el("div", {class: "note rv-log" + (superseded ? " muted" : "")}, when(r) + " · " + r.decision +
        (r.category ? " → " + r.category + (back ? " (the computed category: override cleared)" : "") : "") +
        (r.contrast_id !== null && r.contrast_id !== undefined ? " → " + FT.quoted(r.contrast_text) + " (#" + r.contrast_id + ")" : "") + (r.comment ? ": " + r.comment : "") +
        (superseded ? " (superseded)" : "")));
    });
    if (!FT.meta.review) { box.appendChild(el("p", {class: "muted"}, "read-only: start with `failtrace serve --review` to accept/reject pairs or override categories.")); return box; }
    var comment = el("textarea", {id: "rv-comment", maxlength: 2000, placeholder: "comment (required for an override)",
                                  "aria-label": "review comment (required for an override)"});
    // opens on the case's category now (an override keeps its own), so a click cannot set another by accident
    // the computed category is named so: choosing it over an override removes the override (as `override --clear`)
    var cat = el("select", {id: "rv-category", "aria-label": "category for an override"}, FT.meta.categories.map(function (k) {
      return el("option", {value: k, selected: k === c.effective_category}, k + (k === c.category ? " (computed)" : "")); }));
    var status = el("span", {id: "rv-status", class: "muted", "aria-live": "polite"});
    function send(path, body) { return function () { return FT.post(path, body); }; }
    function decide(d) {
      return function (ev) {
        ev.preventDefault();
        FT.write(send("/api/reviews", {pair_run_id: c.pair_run_id, item_id: c.item_id, decision: d, comment: comment.value}), "rv-status");
      };
    }
    box.appendChild(el("form", {class: "rv"}, [comment,
      el("button", {type: "button", id: "rv-accept", class: "write", onclick: decide("accept")}, "accept pair"),
      el("button", {type: "button", id: "rv-reject", class: "write", onclick: decide("reject")}, "reject pair"), cat,
      el("button", {type: "button", id: "rv-override", class: "write", onclick: function () { override(cat.value); }},
         "override category"),
      c.override ? el("button", {type: "button", id: "rv-clear", class: "write", onclick: function () { override(c.category); }},
                      "clear override") : null,
      status]));
    function override(category) {  // to the computed category over an override: the server removes the override
      var clears = c.override && category === c.category;
      if (!comment.value.trim()) {
        FT.say("rv-status", (clears ? "clearing" : "an override") + " needs a comment: say why", true);
        comment.focus(); return;
      }
      FT.write(send("/api/cases/" + encodeURIComponent(c.case_id) + "/override", {category: category, comment: comment.value}),
               "rv-status", clears ? "saved: the override is removed; the computed category " + category + " counts again"
                                   : "saved: category " + category + " set by hand");
    }
    return box;
  };
})(FT);
