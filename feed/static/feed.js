// Progressive enhancement for the feed pages; every page works without it.
// 1. Relative times: each <time datetime> gets an "3 minutes ago" next to its UTC
//    text, computed here because the server's pages are cached.
// 2. Live mode on the head page: long-polls the head (If-None-Match + Prefer: wait)
//    and inserts the new rows without a reload.
(function () {
  "use strict";
  var UNITS = [["year", 31536000], ["month", 2592000], ["week", 604800],
    ["day", 86400], ["hour", 3600], ["minute", 60], ["second", 1]];
  var rtf = window.Intl && Intl.RelativeTimeFormat
    ? new Intl.RelativeTimeFormat("en", { numeric: "auto" }) : null;

  function ago(date) {
    var secs = (date.getTime() - Date.now()) / 1000;
    for (var i = 0; i < UNITS.length; i++) {
      var u = UNITS[i];
      if (Math.abs(secs) >= u[1] || u[1] === 1) {
        var n = Math.round(secs / u[1]);
        if (rtf) return rtf.format(n, u[0]);
        return Math.abs(n) + " " + u[0] + (Math.abs(n) === 1 ? "" : "s") + (n <= 0 ? " ago" : " from now");
      }
    }
    return "";
  }

  function relativeTimes(root) {
    var times = root.querySelectorAll("time[datetime]");
    for (var i = 0; i < times.length; i++) {
      var t = times[i];
      var d = new Date(t.getAttribute("datetime"));
      if (isNaN(d.getTime())) continue;
      var span = t.nextElementSibling;
      if (!span || !span.classList.contains("ago")) {
        span = document.createElement("span");
        span.className = "ago";
        t.insertAdjacentElement("afterend", span);
      }
      span.textContent = ago(d);
    }
  }

  relativeTimes(document);
  setInterval(function () { relativeTimes(document); }, 15000);

  var main = document.querySelector("[data-live]");
  if (!main || !window.fetch || !window.DOMParser) return;
  var url = main.getAttribute("data-live");
  var etag = main.getAttribute("data-etag");
  // The aria-live region: rendered empty by the server and never replaced, only its
  // text changes, so assistive technology announces each change.
  var status = document.getElementById("live-status");
  function setStatus(state, text) {
    if (!status) return;
    if (status.getAttribute("data-state") === state && status.textContent === text) return;
    status.setAttribute("data-state", state);
    status.textContent = text;
  }

  function newest() {
    var row = document.querySelector("#events tbody tr[data-position]");
    return row ? Number(row.getAttribute("data-position")) : 0;
  }

  function replace(doc, id) {
    var fresh = doc.getElementById(id);
    var old = document.getElementById(id);
    if (fresh && old) old.replaceWith(document.importNode(fresh, true));
  }

  function merge(doc) {
    var tbody = document.querySelector("#events tbody");
    if (!tbody) return;
    var top = newest();
    var rows = doc.querySelectorAll("#events tbody tr[data-position]");
    var added = 0;
    for (var i = rows.length - 1; i >= 0; i--) {
      if (Number(rows[i].getAttribute("data-position")) <= top) continue;
      var row = document.importNode(rows[i], true);
      row.classList.add("new");
      tbody.insertBefore(row, tbody.firstChild);
      relativeTimes(row);
      added++;
    }
    if (added > 0) {
      var empty = tbody.querySelector("tr.empty-row");
      if (empty) empty.remove();
    }
    replace(doc, "pager");
    replace(doc, "range");
  }

  function sleep(ms) { return new Promise(function (r) { setTimeout(r, ms); }); }

  async function follow() {
    var failures = 0;
    for (;;) {
      var started = Date.now();
      try {
        var r = await fetch(url, {
          cache: "no-store",
          headers: { "Accept": "text/html", "If-None-Match": etag, "Prefer": "wait=20" }
        });
        if (r.status === 200) {
          etag = r.headers.get("ETag") || etag;
          merge(new DOMParser().parseFromString(await r.text(), "text/html"));
        } else if (r.status !== 304) {
          throw new Error("HTTP " + r.status);
        }
        failures = 0;
        setStatus("on", "Live: new events appear here as they are published");
        // A cache in front that ignores Prefer: wait would answer at once: stay polite.
        if (Date.now() - started < 1000) await sleep(2000);
      } catch (e) {
        failures++;
        setStatus("off", "Live mode reconnecting…");
        await sleep(Math.min(30000, 1000 * Math.pow(2, failures)));
      }
    }
  }
  setStatus("on", "Live: new events appear here as they are published");
  follow();
})();
