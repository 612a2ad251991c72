// The fleet page's chart: history events per second per shard, from
// rates.json, redrawn every 10 s. uPlot is vendored beside this file.
(function () {
  "use strict";
  var box = document.getElementById("rates");
  if (!box || typeof uPlot === "undefined") { return; }
  var palette = ["#2f5bd3", "#1f7a45", "#b3261e", "#a15c00", "#7a3fb3", "#0f7c8c", "#8c6d0f", "#c2417c"];
  var plot = null, labels = "";

  function draw(body) {
    var names = body.series.map(function (s) { return s.label; });
    var data = [body.t].concat(body.series.map(function (s) { return s.values; }));
    if (names.length === 0) {
      box.textContent = "No history event recorded in this window.";
      plot = null; labels = ""; return;
    }
    if (plot && labels === names.join("|")) { plot.setData(data); return; }
    if (plot) { plot.destroy(); }
    box.textContent = "";
    labels = names.join("|");
    plot = new uPlot({
      width: Math.max(400, box.clientWidth - 16), height: 300,
      scales: { x: { time: true } },
      axes: [{}, { label: "events / s" }],
      series: [{}].concat(names.map(function (n, i) {
        return { label: n, stroke: palette[i % palette.length], width: 1.5, points: { show: false } };
      }))
    }, data, box);
  }

  function load() {
    fetch(box.dataset.src, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(draw)
      .catch(function (e) { box.textContent = "Could not load the rates (" + e + ")."; });
  }
  load();
  setInterval(load, 10000);
})();
