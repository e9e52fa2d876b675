/* The API reference, drawn from FastAPI's own OpenAPI schema (/openapi.json). FastAPI's /docs page would load
   Swagger UI from a CDN, which this explorer never does, so the schema is rendered here instead. */
(function (FT) {
  "use strict";
  var el = FT.el;

  function schemaText(s, spec) {
    if (!s) return "";
    if (s.$ref) { var name = s.$ref.split("/").pop(); return name + " " + schemaText(spec.components.schemas[name], spec); }
    if (s.anyOf) return s.anyOf.map(function (x) { return schemaText(x, spec); }).join(" | ");
    if (s.enum) return s.enum.map(function (x) { return JSON.stringify(x); }).join(" | ");
    if (s.type === "array") return "[" + schemaText(s.items, spec) + "]";
    if (s.type === "object" && s.properties) {
      return "{" + Object.keys(s.properties).map(function (k) {
        return k + ((s.required || []).indexOf(k) >= 0 ? "" : "?") + ": " + schemaText(s.properties[k], spec); }).join(", ") + "}";
    }
    var lim = ["minimum", "maximum", "minLength", "maxLength", "pattern"].filter(function (k) { return s[k] !== undefined; })
      .map(function (k) { return k + " " + s[k]; });
    return (s.type || "any") + (lim.length ? " (" + lim.join(", ") + ")" : "");
  }

  FT.views.api = function (view) {
    return FT.api("/openapi.json").then(function (spec) {
      view.textContent = "";
      var rows = [];
      Object.keys(spec.paths).forEach(function (path) {
        Object.keys(spec.paths[path]).forEach(function (method) {
          var op = spec.paths[path][method];
          var params = (op.parameters || []).map(function (p) {
            return p.name + (p.required ? "" : "?") + " (" + p.in + "): " + schemaText(p.schema, spec); });
          var body = op.requestBody ? "body: " + schemaText(op.requestBody.content["application/json"].schema, spec) : "";
          rows.push(el("tr", {class: "api-op"}, [el("td", {class: "tx"}, method.toUpperCase() + " " + path),
            el("td", {}, [op.summary || "", el("div", {class: "note tx"}, params.concat(body ? [body] : []).join("\n"))])]));
        });
      });
      view.appendChild(el("section", {class: "block"}, [el("h2", {}, spec.info.title + " API " + spec.info.version),
        el("p", {class: "note"}, [spec.info.description || "", " The machine-readable schema: ", el("a", {href: "/openapi.json"}, "/openapi.json"), "."]),
        el("table", {class: "t", id: "api"}, [el("tr", {}, [el("th", {}, "endpoint"), el("th", {}, "what, parameters")])].concat(rows))]));
    });
  };
})(FT);
