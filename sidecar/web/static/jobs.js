// Live job progress without reloading: polls the dashboard's JSON (the session cookie is enough).
(function () {
  "use strict";
  var WORDS = { completed: "OK", failed: "FAILED", running: "running", queued: "queued", interrupted: "INTERRUPTED" };

  function size(n) {
    if (n === null || n === undefined) return "—";
    var units = ["B", "KiB", "MiB", "GiB", "TiB"], v = n, i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return i === 0 ? v.toFixed(0) + " B" : v.toFixed(1) + " " + units[i];
  }

  function bytes(p) {
    return p.bytes_total ? size(p.bytes_done) + " of " + size(p.bytes_total) : size(p.bytes_done) + " read";
  }

  function when(iso) {
    return iso ? iso.replace("T", " ").slice(0, 16) + " UTC" : "—";
  }

  function statusSpan(value) {
    var span = document.createElement("span");
    span.className = "status s-" + value;
    span.textContent = WORDS[value] || value;
    return span;
  }

  function get(url, done) {
    var xhr = new XMLHttpRequest();
    xhr.open("GET", url);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.onload = function () {
      if (xhr.status === 200) done(JSON.parse(xhr.responseText));
      else if (xhr.status === 401 || xhr.status === 302) window.location.reload();
    };
    xhr.send();
  }

  // one job's page
  var job = document.getElementById("job");
  if (job) {
    var last = null;
    var tick = function () {
      get(job.getAttribute("data-url"), function (doc) {
        var j = doc.job, p = j.progress || {};
        var status = document.getElementById("job-status");
        status.replaceChildren(statusSpan(j.status));
        document.getElementById("job-phase").textContent = j.phase || "—";
        var bar = document.getElementById("job-progress");
        bar.max = p.bytes_total || 1;
        bar.value = p.bytes_done || 0;
        document.getElementById("job-bytes").textContent = bytes(p);
        var running = j.status === "queued" || j.status === "running";
        var rateText = "";
        if (running && last && doc.now > last.now) {
          var rate = ((p.bytes_done || 0) - last.done) / (doc.now - last.now);
          rateText = rate > 0 ? "(" + size(rate) + "/s)" : "";
        }
        document.getElementById("job-rate").textContent = rateText;
        last = { now: doc.now, done: p.bytes_done || 0 };
        document.getElementById("job-error").textContent = j.error || "—";
        if (j.finished_at) document.getElementById("job-finished").textContent = when(j.finished_at);
        if (!running && j.status === "completed") { bar.max = 1; bar.value = 1; }
        if (j.status === "queued" || j.status === "running") setTimeout(tick, 1000);
      });
    };
    setTimeout(tick, 500);
  }

  // the jobs list
  var script = document.currentScript;
  var list = document.getElementById("jobs");
  if (list && script && script.getAttribute("data-list")) {
    var base = script.getAttribute("data-job-base");
    var refresh = function () {
      get(script.getAttribute("data-list"), function (doc) {
        var rows = doc.items.map(function (j) {
          var tr = document.createElement("tr");
          tr.setAttribute("data-job", j.job_id);
          var a = document.createElement("a");
          a.href = base + "/" + encodeURIComponent(j.job_id);
          a.textContent = j.job_id;
          var p = j.progress || {};
          var progress = (j.phase || "") + (p.bytes_done || p.bytes_total ? " " + bytes(p) : "");
          var cells = [a, j.kind, j.app_id || "—", statusSpan(j.status), progress, when(j.started_at)];
          var labels = ["Job", "Kind", "App", "Status", "Progress", "Started"];
          cells.forEach(function (c, i) {
            var td = document.createElement("td");
            td.setAttribute("data-label", labels[i]);
            if (typeof c === "string") td.textContent = c; else td.appendChild(c);
            tr.appendChild(td);
          });
          return tr;
        });
        if (rows.length) list.replaceChildren.apply(list, rows);
        document.getElementById("updated").textContent = "Updated " + new Date().toLocaleTimeString() + ".";
        setTimeout(refresh, 2000);
      });
    };
    setTimeout(refresh, 2000);
  }
})();
