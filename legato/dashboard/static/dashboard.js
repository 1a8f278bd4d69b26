/* Legato dashboard: local times, charts, the trigger form's JSON check, log filters.
   Loaded from the package (no network); runs on every page and on content htmx swaps in. */
(function () {
  "use strict";

  var COLOURS = {
    succeeded: "#009E73", failed: "#D55E00", cancelled: "#777777", running: "#0072B2"
  };
  var LEVELS = { DEBUG: 10, INFO: 20, WARNING: 30, ERROR: 40, CRITICAL: 50 };
  var browserZone = "UTC";
  try { browserZone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC"; } catch (e) { /* keep UTC */ }

  // -- time zone: tell the server (the schedule calendar cuts days in it) ------------------
  document.cookie = "legato_tz=" + encodeURIComponent(browserZone) + "; path=/; max-age=31536000; SameSite=Lax";

  // -- times -------------------------------------------------------------------------------
  function pad(n, width) { n = String(n); while (n.length < (width || 2)) { n = "0" + n; } return n; }

  function utcText(d) {
    return d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) + " " +
      pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + ":" + pad(d.getUTCSeconds()) + " UTC";
  }

  function relative(d) {
    var diff = (d.getTime() - Date.now()) / 1000;
    var abs = Math.abs(diff);
    var text;
    if (abs < 5) { return "just now"; }
    if (abs < 60) { text = Math.round(abs) + " s"; }
    else if (abs < 3600) { text = Math.round(abs / 60) + " min"; }
    else if (abs < 86400) { text = (abs / 3600).toFixed(abs < 36000 ? 1 : 0) + " h"; }
    else { text = Math.round(abs / 86400) + " d"; }
    return diff < 0 ? text + " ago" : "in " + text;
  }

  function formatTime(el) {
    var iso = el.getAttribute("datetime");
    var d = new Date(iso);
    if (!iso || isNaN(d.getTime())) { return; }
    var fmt = el.getAttribute("data-format") || "datetime";
    var local = d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
    var text;
    if (fmt === "relative") { text = relative(d); }
    else if (fmt === "clock") { text = d.toLocaleTimeString(undefined, { hour12: false }) + "." + pad(d.getMilliseconds(), 3); }
    else if (fmt === "hm") { text = d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", hour12: false }); }
    else if (fmt === "date") { text = d.toLocaleDateString(undefined, { dateStyle: "medium" }); }
    else { text = local; }
    el.textContent = text;
    el.title = (fmt === "datetime" ? "" : local + " · ") + utcText(d);
  }

  function formatTimes(root) {
    var els = root.querySelectorAll ? root.querySelectorAll("time[datetime]") : [];
    for (var i = 0; i < els.length; i++) { formatTime(els[i]); }
    if (root.matches && root.matches("time[datetime]")) { formatTime(root); }
  }
  setInterval(function () {
    var els = document.querySelectorAll('time[data-format="relative"]');
    for (var i = 0; i < els.length; i++) { formatTime(els[i]); }
  }, 15000);

  // -- charts (uPlot) ----------------------------------------------------------------------
  function chartData(el) {
    var script = el.parentNode.querySelector("script.chart-data");
    return script ? JSON.parse(script.textContent) : null;
  }

  function sized(el) { return Math.max(280, el.clientWidth || 600); }

  // Axis and grid colours follow the page's (light or dark) theme.
  function axes(label, size) {
    var css = getComputedStyle(document.documentElement);
    var ink = css.getPropertyValue("--muted").trim() || "#5c6673";
    var line = css.getPropertyValue("--line").trim() || "#dde1e6";
    var axis = { stroke: ink, grid: { stroke: line, width: 1 }, ticks: { stroke: line, width: 1 } };
    return [axis, Object.assign({ label: label, size: size }, axis)];
  }

  function activityChart(el, data) {
    var names = ["succeeded", "failed", "cancelled"];
    var series = [{}];
    var rows = [data.x];
    names.forEach(function (name) {
      series.push({
        label: name, stroke: COLOURS[name], width: 1.5,
        fill: name === "succeeded" ? "rgba(0,158,115,0.12)" : undefined,
        dash: name === "failed" ? [6, 3] : (name === "cancelled" ? [2, 3] : undefined),
        points: { show: false }
      });
      rows.push(data.series[name]);
    });
    return new uPlot({
      width: sized(el), height: 240, series: series,
      axes: axes("runs / min", 50),
      scales: { y: { range: function (u, min, max) { return [0, Math.max(4, max)]; } } }
    }, rows, el);
  }

  function durationChart(el, data) {
    var xs = {};
    ["succeeded", "failed"].forEach(function (k) { (data[k] || []).forEach(function (p) { xs[Math.floor(p[0] / 1000)] = true; }); });
    var x = Object.keys(xs).map(Number).sort(function (a, b) { return a - b; });
    var rows = [x];
    var series = [{}];
    ["succeeded", "failed"].forEach(function (k) {
      var at = {};
      (data[k] || []).forEach(function (p) { at[Math.floor(p[0] / 1000)] = p[1]; });
      rows.push(x.map(function (t) { return t in at ? at[t] : null; }));
      series.push({
        label: k, stroke: COLOURS[k], width: 0, paths: function () { return null; },
        points: { show: true, size: k === "failed" ? 8 : 6, fill: COLOURS[k], stroke: COLOURS[k] },
        value: function (u, v) { return v == null ? "—" : v.toFixed(2) + " s"; }
      });
    });
    return new uPlot({
      width: sized(el), height: 220, series: series,
      axes: axes("seconds", 55),
      scales: {
        x: { range: function (u, min, max) { return min === max ? [min - 3600, max + 3600] : [min, max]; } },
        y: { range: function (u, min, max) { return [0, Math.max(1, max * 1.1)]; } } }
    }, rows, el);
  }

  function initCharts(root) {
    if (typeof uPlot === "undefined") { return; }
    var els = root.querySelectorAll ? root.querySelectorAll(".chart[data-chart]") : [];
    for (var i = 0; i < els.length; i++) {
      var el = els[i];
      if (el.dataset.ready) { continue; }
      el.dataset.ready = "1";
      var data = chartData(el);
      if (!data) { continue; }
      var plot = el.dataset.chart === "activity" ? activityChart(el, data) : durationChart(el, data);
      if (window.ResizeObserver) {
        (function (p, node) {
          new ResizeObserver(function () { p.setSize({ width: sized(node), height: p.height }); }).observe(node);
        })(plot, el);
      }
    }
  }

  // -- the trigger form's JSON editor ------------------------------------------------------
  function checkParams(area) {
    var status = document.getElementById("params-status");
    var button = area.form.querySelector('button[type="submit"]');
    var message = "", ok = true, value;
    try {
      value = JSON.parse(area.value.trim() || "{}");
      if (value === null || typeof value !== "object" || Array.isArray(value)) {
        ok = false; message = "The parameters must be a JSON object, like {\"day\": \"2026-11-24\"}.";
      }
    } catch (e) {
      ok = false; message = "Invalid JSON: " + e.message;
    }
    if (ok) {
      var required = (area.dataset.required || "").split(",").filter(Boolean);
      var known = (area.dataset.known || "").split(",").filter(Boolean);
      var missing = required.filter(function (n) { return !(n in value); });
      var unknown = area.dataset.variadic ? [] : Object.keys(value).filter(function (n) { return known.indexOf(n) < 0; });
      if (missing.length) { ok = false; message = "Missing required parameter: " + missing.join(", ") + "."; }
      else if (unknown.length) { ok = false; message = "Unknown parameter: " + unknown.join(", ") + " (this flow takes: " + (known.join(", ") || "none") + ")."; }
      else { message = "✓ Valid parameters."; }
    }
    area.classList.toggle("invalid", !ok);
    area.setAttribute("aria-invalid", ok ? "false" : "true");
    if (status) { status.textContent = message; status.className = "small " + (ok ? "good" : "bad"); }
    if (button) { button.disabled = !ok; }
    return ok;
  }

  function initEditors(root) {
    var areas = root.querySelectorAll ? root.querySelectorAll("textarea.json-editor") : [];
    for (var i = 0; i < areas.length; i++) {
      var area = areas[i];
      if (area.dataset.ready) { continue; }
      area.dataset.ready = "1";
      area.addEventListener("input", function (ev) { checkParams(ev.target); });
      area.addEventListener("keydown", function (ev) {
        if (ev.key === "Tab" && !ev.shiftKey) {  // indent instead of leaving the editor
          ev.preventDefault();
          var t = ev.target, s = t.selectionStart;
          t.value = t.value.slice(0, s) + "  " + t.value.slice(t.selectionEnd);
          t.selectionStart = t.selectionEnd = s + 2;
          checkParams(t);
        }
      });
      area.form.addEventListener("submit", function (ev) {
        var a = ev.target.querySelector("textarea.json-editor");
        if (a && !checkParams(a)) { ev.preventDefault(); a.focus(); }
      });
      checkParams(area);
    }
  }

  // -- logs: level filter, search, follow --------------------------------------------------
  function filterLogs() {
    var box = document.getElementById("log-lines");
    if (!box) { return; }
    var level = LEVELS[(document.getElementById("log-level") || {}).value] || 0;
    var needle = ((document.getElementById("log-search") || {}).value || "").toLowerCase();
    var lines = box.querySelectorAll(".log");
    var shown = 0;
    for (var i = 0; i < lines.length; i++) {
      var line = lines[i];
      var visible = (LEVELS[line.dataset.level] || 20) >= level &&
        (!needle || line.textContent.toLowerCase().indexOf(needle) >= 0);
      line.classList.toggle("hidden", !visible);
      if (visible) { shown++; }
    }
    var count = document.getElementById("log-count");
    if (count) { count.textContent = lines.length ? shown + " of " + lines.length + " lines" : ""; }
    var empty = document.getElementById("log-empty");
    if (empty) { empty.hidden = lines.length > 0; }
  }

  function follow() {
    var box = document.getElementById("log-lines");
    var on = document.getElementById("log-follow");
    if (box && on && on.checked) { box.scrollTop = box.scrollHeight; }
  }

  function initLogs() {
    var level = document.getElementById("log-level");
    var search = document.getElementById("log-search");
    if (!level || level.dataset.ready) { return; }
    level.dataset.ready = "1";
    level.addEventListener("change", filterLogs);
    search.addEventListener("input", filterLogs);
    var box = document.getElementById("log-lines");
    var on = document.getElementById("log-follow");
    box.addEventListener("scroll", function () {  // scrolling up stops following
      if (on && box.scrollHeight - box.scrollTop - box.clientHeight > 40) { on.checked = false; }
    });
    filterLogs();
    follow();
  }

  // -- forms -------------------------------------------------------------------------------
  function initAutosubmit(root) {
    var els = root.querySelectorAll ? root.querySelectorAll("[data-autosubmit]") : [];
    for (var i = 0; i < els.length; i++) {
      if (els[i].dataset.ready) { continue; }
      els[i].dataset.ready = "1";
      els[i].addEventListener("change", function (ev) { ev.target.form.requestSubmit(); });
    }
  }

  // -- schedule calendar: cut days in the browser's zone -----------------------------------
  function checkCalendarZone() {
    var el = document.getElementById("cal-zone");
    if (!el || el.dataset.tz === browserZone) { return; }
    var key = "legato-tz-reload";
    if (sessionStorage.getItem(key) === browserZone) { return; }  // zone unknown to the server
    sessionStorage.setItem(key, browserZone);
    location.reload();
  }

  function init(root) {
    formatTimes(root);
    initCharts(root);
    initEditors(root);
    initAutosubmit(root);
  }

  document.addEventListener("DOMContentLoaded", function () {
    init(document);
    initLogs();
    checkCalendarZone();
    if (window.htmx) {
      htmx.onLoad(function (el) { init(el); });
      document.body.addEventListener("htmx:afterSettle", function () { filterLogs(); follow(); });
      document.body.addEventListener("htmx:oobAfterSwap", function () { filterLogs(); follow(); });
    }
  });
})();
