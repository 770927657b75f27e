// Progressive enhancement only: every page works without it.
(function () {
  var tz = document.getElementById("timezone");
  if (tz) { try { tz.value = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) {} }
  var live = document.querySelector("[data-live-url]");
  if (!live) { return; }
  var url = live.getAttribute("data-live-url");
  function refresh() {
    fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (counts) {
        if (!counts) { return; }
        document.querySelectorAll("[data-live]").forEach(function (el) {
          var key = el.getAttribute("data-live");
          if (key in counts) { el.textContent = String(counts[key]); }
        });
      })
      .catch(function () {});
  }
  setInterval(refresh, 5000);
})();
