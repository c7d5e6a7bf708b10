/* respan-gateway dashboard: line plots as SVG, drawn from the page's JSON data block.
   Hand-written for this project (Apache-2.0, like the gateway); no dependency, no build step.
   Each <div class="plot" data-series="a,b"> gets one line per series; data-groups="key" draws one
   line per entry of that object. Points are <circle class="point"> with a <title> (hover tooltip). */
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#ca8a04"];
  var H = 200, L = 56, R = 12, T = 12, B = 28;

  function el(name, attrs, parent) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (parent) parent.appendChild(node);
    return node;
  }

  function label(value) {
    if (value === null || value === undefined) return "";
    if (Math.abs(value) >= 1e6) return (value / 1e6).toFixed(1) + "M";
    if (Math.abs(value) >= 1e3) return (value / 1e3).toFixed(1) + "k";
    if (value !== 0 && Math.abs(value) < 0.01) return value.toExponential(1);
    return String(Math.round(value * 1000) / 1000);
  }

  function when(epoch, daily) {
    var iso = new Date(epoch * 1000).toISOString();
    return daily ? iso.slice(0, 10) : iso.slice(5, 16).replace("T", " ");
  }

  function draw(div, buckets, lines) {
    var W = Math.max(360, Math.round(div.clientWidth) || 560);  // the plot's own width: text keeps its size
    var max = 0;
    lines.forEach(function (line) {
      line.values.forEach(function (v) { if (v !== null && v > max) max = v; });
    });
    if (max === 0) max = 1;
    var n = buckets.length;
    var daily = n > 1 && buckets[1] - buckets[0] >= 86400;
    var x = function (i) { return L + (n === 1 ? (W - L - R) / 2 : i * (W - L - R) / (n - 1)); };
    var y = function (v) { return T + (H - T - B) * (1 - v / max); };
    var svg = el("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "class": "chart" });
    el("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, "class": "axis" }, svg);
    el("line", { x1: L, y1: T, x2: L, y2: H - B, "class": "axis" }, svg);
    [[max, T + 4], [max / 2, y(max / 2) + 4], [0, H - B]].forEach(function (tick) {
      el("text", { x: L - 6, y: tick[1], "text-anchor": "end", "class": "tick" }, svg).textContent = label(tick[0]);
    });
    if (n) {
      el("text", { x: L, y: H - 8, "class": "tick" }, svg).textContent = when(buckets[0], daily);
      el("text", { x: W - R, y: H - 8, "text-anchor": "end", "class": "tick" }, svg).textContent = when(buckets[n - 1], daily);
    }
    lines.forEach(function (line, k) {
      var color = COLORS[k % COLORS.length];
      var points = [];
      line.values.forEach(function (v, i) { if (v !== null) points.push(x(i) + "," + y(v)); });
      if (points.length) el("polyline", { points: points.join(" "), fill: "none", stroke: color, "stroke-width": 2, "class": "line" }, svg);
      line.values.forEach(function (v, i) {
        if (v === null || (v === 0 && n > 48)) return;  // many buckets: only the non-zero ones get a dot
        var dot = el("circle", { cx: x(i), cy: y(v), r: 3, fill: color, "class": "point", "data-series": line.name }, svg);
        el("title", {}, dot).textContent = line.name + " · " + when(buckets[i], daily) + ": " + label(v);
      });
    });
    var legend = document.createElement("ul");
    legend.className = "legend";
    lines.forEach(function (line, k) {
      var item = document.createElement("li");
      var swatch = el("svg", { width: 10, height: 10, "class": "swatch" });
      el("rect", { width: 10, height: 10, fill: COLORS[k % COLORS.length] }, swatch);
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(" " + line.name));
      legend.appendChild(item);
    });
    div.textContent = "";
    div.appendChild(svg);
    div.appendChild(legend);
  }

  function start() {
    var block = document.getElementById("usage-data");
    if (!block) return;
    var data = JSON.parse(block.textContent);
    document.querySelectorAll(".plot").forEach(function (div) {
      var lines = [];
      if (div.dataset.series) {
        div.dataset.series.split(",").forEach(function (name) { lines.push({ name: name, values: data[name] }); });
      } else if (div.dataset.groups) {
        var groups = data[div.dataset.groups] || {};
        Object.keys(groups).sort(function (a, b) {
          var sum = function (k) { return groups[k].reduce(function (s, v) { return s + v; }, 0); };
          return sum(b) - sum(a);
        }).slice(0, COLORS.length).forEach(function (name) { lines.push({ name: name, values: groups[name] }); });
      }
      draw(div, data.buckets, lines);
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
