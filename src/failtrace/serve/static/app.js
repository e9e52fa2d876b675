/* The explorer's router: the URL hash names the view and its state, so every link reopens the same view. */
(function (FT) {
  "use strict";
  var view = document.getElementById("view");

  // data-ready-hash names the URL state painted: setting the hash fires hashchange only later, so data-ready alone
  // can still be the previous state's (tests and scripts wait for data-ready-hash === location.hash). A view may
  // rewrite its own hash (FT.go with replace: the graph adds p=1.00, a short case id becomes the whole one), while
  // painting or after: `expected` follows those rewrites, so data-ready-hash names the final hash.
  var expected = null, place = null;
  FT.onReplace = function (h) {
    var p = FT.parseHash();  // still this view (a short id followed): a later state change keeps the scroll
    expected = h; place = p.route + "/" + p.arg;
    if (document.body.dataset.ready) document.body.dataset.readyHash = h;
  };

  // keep: {scroll: y} redraws the view where the page was (after a review write); otherwise a new view (another
  // route or id, not a state change such as a method switch) starts at the top of the page
  function route(keep) {
    var views = {cases: FT.views.cases, case: FT.views.case, graph: FT.views.graph, item: FT.views.item, api: FT.views.api, across: FT.views.across};
    var h = FT.parseHash();
    // own keys only: "#/constructor" or "#/__proto__" name Object.prototype members, not views
    var fn = Object.prototype.hasOwnProperty.call(views, h.route) ? views[h.route] : null;
    FT.tip(null, null);
    FT.crumb([]);  // each view names itself once its data is in; a view that fails leaves no other view's crumb
    document.body.dataset.view = h.route;
    view.setAttribute("aria-busy", "true");
    var mine = ++FT.gen, here = h.route + "/" + h.arg, moved = here !== place;
    expected = location.hash; place = here;
    // a view that throws before returning its promise is an error shown like any other, never a page left busy
    var noted = FT.noteReviews();  // asked before the view's data: a write in between redraws once more, never less
    var shown = !fn ? Promise.reject(new Error("unknown view: " + FT.clip(h.route, 80))) : h.bad ? Promise.reject(new Error(h.bad))
      : Promise.resolve().then(function () { return fn(view, h.params, h.arg); });
    return shown.catch(function (e) { if (mine === FT.gen) FT.error(view, e); })  // (a newer route's view stays)
      .then(function () {
        if (mine !== FT.gen) return;  // a newer route is painting: it says when it is ready
        view.setAttribute("aria-busy", "false");
        if (keep) window.scrollTo(0, keep.scroll); else if (moved) window.scrollTo(0, 0);
        return noted;  // what this page drew, so another tab's write is noticed (FT.checkReviews)
      }).then(function () {
        if (mine !== FT.gen) return;
        document.body.dataset.ready = h.route;
        document.body.dataset.readyHash = expected;
      });
  }

  /* the current view drawn again from the server, the page kept where it was (a review write's result) */
  FT.redraw = function () {
    var y = window.scrollY;
    document.body.dataset.ready = "";
    return route({scroll: y});
  };

  FT.api("/api/meta").then(function (meta) {
    FT.meta = meta;
    document.getElementById("sub").textContent = meta.store + " · " + (meta.review ? "review mode (writes on)" : "read-only") +
      (meta.snapshot ? " · " + meta.snapshot + ": the store as it was when the explorer started" : "") +
      (meta.n_cases ? "" : " · no analysed cases yet");
    if (meta.has_comparisons) document.getElementById("nav-across").hidden = false;
    window.addEventListener("hashchange", function () { document.body.dataset.ready = ""; route(null); });
    window.addEventListener("focus", FT.checkReviews);
    document.addEventListener("visibilitychange", FT.checkReviews);
    route(null);
  }, function (e) { FT.error(view, e); });
})(FT);
