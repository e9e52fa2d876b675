/* failtrace report: method switch for the case heatmaps, click-to-find from the masking-order rows, the long
   context opened at the prediction, figures zoomed on a click, case filter, nav highlight. No network, no libraries. */
(function(){
  "use strict";
  var RED=[220,38,38], BLUE=[37,99,235];
  function mix(v){  // white blended towards red (v>0) or blue (v<0); |v| clipped to 1
    var a=Math.min(1,Math.abs(v)||0), e=v>0?RED:BLUE;
    return "rgb("+e.map(function(c){return Math.round(255+(c-255)*a);}).join(",")+")";
  }
  function recolour(art, method){
    var data=JSON.parse(art.querySelector("script.case-data").textContent);
    var vals=data.norm[method], raw=data.raw[method], white=data.white_above; if(!vals) return;
    art.querySelectorAll(".strip .tok").forEach(function(el){
      var p=+el.dataset.p, v=vals[p];
      if(!el.classList.contains("sp")){
        el.style.background=mix(v); el.style.color=Math.abs(v)>=(v>0?white.red:white.blue)?"#fff":"#000";
      }
      el.title=el.dataset.base+"\n"+method+": "+(raw[p]===null||raw[p]===undefined?"R not computed":  // NaN arrives as null
        "R = "+String(Number((+raw[p]).toPrecision(4)))+", normalised = "+(+v).toFixed(3));
    });
    art.querySelectorAll(".methods button").forEach(function(b){
      b.setAttribute("aria-pressed", b.dataset.method===method?"true":"false");
    });
    art.querySelectorAll(".masked-for").forEach(function(d){ d.hidden = d.dataset.method!==method; });
  }
  function find(art, p){  // a masking-order row's token: into view in the strip, marked for a moment
    var t=art.querySelector('.strip .tok[data-p="'+p+'"]'); if(!t) return;
    t.scrollIntoView({block:"center"}); t.classList.add("hl");
    setTimeout(function(){ t.classList.remove("hl"); }, 2000);
  }
  document.querySelectorAll("article.case").forEach(function(art){
    art.querySelectorAll(".methods button").forEach(function(b){
      b.addEventListener("click", function(){ recolour(art, b.dataset.method); });
    });
    art.querySelectorAll("table.masked tr[data-p]").forEach(function(tr){
      tr.title="find it in the heatmap"; tr.addEventListener("click", function(){ find(art, tr.dataset.p); });
    });
    ftOpenAtPrediction(art.querySelector(".strip"));  // strip.js: a long context opens at the prediction
  });
  // a figure drawn smaller than its pixels opens at full size (in a box that scrolls) on a click, and back
  var figs=[].slice.call(document.querySelectorAll("figure img"));
  function shrunk(img){ return img.naturalWidth>img.clientWidth+1 || img.parentNode.classList.contains("zoom"); }
  function mark(){ figs.forEach(function(img){
    var z=shrunk(img); img.classList.toggle("zoomable", z);
    if(z) img.title=img.parentNode.classList.contains("zoom")?"click: fit the page":"click: full size";
    else img.removeAttribute("title");
  }); }
  figs.forEach(function(img){
    img.addEventListener("load", mark);
    img.addEventListener("click", function(){ if(shrunk(img)){ img.parentNode.classList.toggle("zoom"); mark(); } });
  });
  window.addEventListener("resize", mark); mark();
  var box=document.getElementById("case-filter"), sel=document.getElementById("case-bench");
  function filter(){
    var q=(box&&box.value||"").toLowerCase(), bench=sel?sel.value:"", shown=0;
    var dotted=q.replace(/ /g,"\u00b7");  // a token is searchable as shown (" return" is "·return")
    document.querySelectorAll("article.case").forEach(function(art){
      var s=art.dataset.search, ok=(!q||s.indexOf(q)>=0||s.indexOf(dotted)>=0)&&(!bench||art.dataset.bench===bench);
      art.style.display=ok?"":"none"; if(ok) shown++;
    });
    var c=document.getElementById("case-count"); if(c) c.textContent=shown+" shown";
  }
  // a link to a case the filter hides clears the filter first, so the link always lands on its case
  document.querySelectorAll('a[href^="#case-"]').forEach(function(a){
    a.addEventListener("click", function(){
      var t=document.getElementById(a.getAttribute("href").slice(1));
      if(t&&t.style.display==="none"){ if(box) box.value=""; if(sel) sel.value=""; filter(); }
    });
  });
  if(box) box.addEventListener("input", filter);
  if(sel) sel.addEventListener("change", filter);
  var links=[].slice.call(document.querySelectorAll("nav.bar a[href^='#']"));
  function onScroll(){
    var cur=null;
    links.forEach(function(a){
      var t=document.getElementById(a.getAttribute("href").slice(1));
      if(t&&t.getBoundingClientRect().top<90) cur=a;
    });
    links.forEach(function(a){ a.classList.toggle("active", a===cur); });
  }
  window.addEventListener("scroll", onScroll, {passive:true}); onScroll();
})();
