// EntryGuard dashboard: small progressive enhancements. Every page works without it.
"use strict";

(function () {
  function formatLeft(seconds) {
    var s = Math.max(0, Math.round(seconds));
    var d = Math.floor(s / 86400); s -= d * 86400;
    var h = Math.floor(s / 3600); s -= h * 3600;
    var m = Math.floor(s / 60); s -= m * 60;
    if (d) return d + "d " + h + "h " + m + "m";
    if (h) return h + "h " + m + "m " + s + "s";
    if (m) return m + "m " + s + "s";
    return s + "s";
  }

  // Live countdowns: <span data-countdown="2026-11-22T21:00:00.000Z">.
  function tick() {
    var now = Date.now();
    var expired = false;
    document.querySelectorAll("[data-countdown]").forEach(function (el) {
      var left = (Date.parse(el.getAttribute("data-countdown")) - now) / 1000;
      el.textContent = left > 0 ? formatLeft(left) : "expired";
      if (left <= 0 && el.closest("[data-session-watch]") && !el.dataset.done) {
        el.dataset.done = "1";
        expired = true;
      }
    });
    if (expired) setTimeout(function () { window.location.reload(); }, 1500);
  }

  // If the session ends elsewhere (eg session stop, an admin's revoke), show it.
  function watchSession(el) {
    var id = el.getAttribute("data-session-watch");
    setInterval(function () {
      fetch("/api/v1/sessions/current", { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (body) {
          if (body && (!body.session || String(body.session.id) !== id)) window.location.reload();
        })
        .catch(function () {});
    }, 15000);
  }

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "offscreen";
    document.body.appendChild(area);
    area.select();
    try { document.execCommand("copy"); } finally { document.body.removeChild(area); }
    return Promise.resolve();
  }

  function showWhen(form) {
    var type = form.querySelector("select[name=type]");
    if (!type) return;
    function apply() {
      form.querySelectorAll("[data-show-when]").forEach(function (fs) {
        fs.hidden = fs.getAttribute("data-show-when") !== type.value;
      });
    }
    type.addEventListener("change", apply);
    apply();
  }

  function cidrWarning(input) {
    var form = input.form;
    var warning = form && form.querySelector("[data-any-warning]");
    if (!warning) return;
    function apply() {
      var v = input.value.trim();
      warning.hidden = !/^(0\.0\.0\.0|::|::0|0:0:0:0:0:0:0:0)\/0$/.test(v);
    }
    input.addEventListener("input", apply);
    apply();
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (document.querySelector("[data-countdown]")) { tick(); setInterval(tick, 1000); }
    document.querySelectorAll("[data-session-watch]").forEach(watchSession);
    document.querySelectorAll("[data-resource-form]").forEach(showWhen);
    document.querySelectorAll("input[data-cidr]").forEach(cidrWarning);

    document.addEventListener("click", function (ev) {
      var btn = ev.target.closest("[data-copy]");
      if (!btn) return;
      copyText(btn.getAttribute("data-copy")).then(function () {
        var label = btn.querySelector("span");
        btn.classList.add("copied");
        if (label) label.textContent = "Copied";
        setTimeout(function () {
          btn.classList.remove("copied");
          if (label) label.textContent = "Copy";
        }, 1500);
      });
    });

    document.addEventListener("submit", function (ev) {
      var msg = ev.target.getAttribute("data-confirm");
      if (msg && !window.confirm(msg)) ev.preventDefault();
    });

    document.querySelectorAll("select[data-autosubmit]").forEach(function (sel) {
      sel.addEventListener("change", function () { sel.form.submit(); });
    });
  });
})();
