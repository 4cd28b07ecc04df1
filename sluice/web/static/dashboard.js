// sluice dashboard: live charts (uPlot, vendored) and live run progress. No build step.
(function () {
  "use strict";

  function chartOpts(title, width, series) {
    var fromZero = { range: function (u, min, max) { return [0, Math.max(1, max) * 1.1]; } };
    return { width: width, height: 220, scales: { x: { time: true }, y: fromZero },
             legend: { show: true }, series: [{}].concat(series) };
  }

  function startCharts(box) {
    var url = box.getAttribute("data-series-url");
    var loadedEl = document.getElementById("chart-loaded");
    var rateEl = document.getElementById("chart-rate");
    var width = Math.max(320, loadedEl.clientWidth || 560);
    var empty = [[], []];
    var loaded = new uPlot(chartOpts("loaded", width, [
      { label: "loaded", stroke: "#805ad5", fill: "rgba(128,90,213,.15)", width: 1.5,
        paths: uPlot.paths.bars({ size: [0.9, 40] }) }]), empty, loadedEl);
    var rate = new uPlot(chartOpts("rate", width, [
      { label: "executed/s", stroke: "#2b6cb0", width: 2 },
      { label: "target", stroke: "#c53030", dash: [6, 4], width: 1.5 }]), [[], [], []], rateEl);
    var state = { loaded: loaded, rate: rate, points: 0, target: null, achieved: null };
    window.sluiceCharts = state;

    function poll() {
      fetch(url, { headers: { "Accept": "application/json" } })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (d) {
          if (!d) { return; }
          var target = d.t.map(function () { return d.target; });
          loaded.setData([d.t, d.loaded]);
          rate.setData([d.t, d.rate, target]);
          state.points = d.t.length;
          state.target = d.target;
          state.achieved = d.achieved;
          state.lastRate = d.rate.length ? d.rate[d.rate.length - 1] : null;
          box.setAttribute("data-points", String(d.t.length));
          var a = document.getElementById("achieved");
          if (a) {
            a.textContent = d.achieved == null ? "" : "achieved " +
              Math.round(d.achieved).toLocaleString() + " records/s over the last 10 s";
          }
        })
        .catch(function () { /* the next poll tries again */ })
        .then(function () { setTimeout(poll, 1000); });
    }
    poll();
  }

  function startRefresh(el) {
    var url = el.getAttribute("data-refresh");
    function tick() {
      fetch(url).then(function (r) { return r.ok ? r.text() : null; }).then(function (html) {
        if (html === null) { return; }
        el.innerHTML = html;
        var facts = el.querySelector("[data-state]");
        var s = facts ? facts.getAttribute("data-state") : "";
        if (["succeeded", "failed", "lost", "cancelled", "skipped", "missed"].indexOf(s) < 0) {
          setTimeout(tick, 1000);
        }
      }).catch(function () { setTimeout(tick, 2000); });
    }
    setTimeout(tick, 1000);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var box = document.getElementById("charts");
    if (box && window.uPlot) { startCharts(box); }
    var run = document.querySelector("[data-refresh]");
    if (run) { startRefresh(run); }
  });
})();
