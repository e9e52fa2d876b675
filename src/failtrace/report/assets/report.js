/* failtrace report: method switch for the case heatmaps, case filter, nav highlight. No network, no libraries. */
(function(){
  "use strict";
  var RED=[220,38,38], BLUE=[37,99,235];
  function mix(v){  // white blended towards red (v>0) or blue (v<0); |v| clipped to 1
    var a=Math.min(1,Math.abs(v)||0), e=v>0?RED:BLUE;
    return "rgb("+e.map(function(c){return Math.round(255+(c-255)*a);}).join(",")+")";
  }
  function recolour(art, method){
    var data=JSON.parse(art.querySelector("script.case-data").textContent);
    var vals=data.norm[method], raw=data.raw[method]; if(!vals) return;
    art.querySelectorAll(".strip .tok").forEach(function(el){
      var p=+el.dataset.p, v=vals[p];
      if(!el.classList.contains("sp")){
        el.style.background=mix(v); el.style.color=Math.abs(v)>0.62?"#fff":"#111";
      }
      el.title=el.dataset.base+"\n"+method+": R = "+raw[p]+", normalised = "+v;
    });
    art.querySelectorAll(".methods button").forEach(function(b){
      b.setAttribute("aria-pressed", b.dataset.method===method?"true":"false");
    });
    art.querySelectorAll(".masked-for").forEach(function(d){ d.hidden = d.dataset.method!==method; });
  }
  document.querySelectorAll("article.case").forEach(function(art){
    art.querySelectorAll(".methods button").forEach(function(b){
      b.addEventListener("click", function(){ recolour(art, b.dataset.method); });
    });
  });
  var box=document.getElementById("case-filter"), sel=document.getElementById("case-bench");
  function filter(){
    var q=(box&&box.value||"").toLowerCase(), bench=sel?sel.value:"", shown=0;
    document.querySelectorAll("article.case").forEach(function(art){
      var ok=(!q||art.dataset.search.indexOf(q)>=0)&&(!bench||art.dataset.bench===bench);
      art.style.display=ok?"":"none"; if(ok) shown++;
    });
    var c=document.getElementById("case-count"); if(c) c.textContent=shown+" shown";
  }
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
