// Reading page: time on item, keyboard shortcuts, zoom, mask toggle. The page works without it
// (plain form posts); this only adds speed. Nothing here is sent anywhere but the form.
(function () {
  "use strict";
  var form = document.getElementById("answer-form");
  if (!form) return;
  var started = performance.now();
  var stage = document.getElementById("stage");
  var zoomOut = document.getElementById("zoom-level");
  var zoom = 1;

  function setZoom(z) {
    zoom = Math.min(4, Math.max(0.5, Math.round(z * 4) / 4));
    stage.style.setProperty("--zoom", String(zoom));
    zoomOut.textContent = Math.round(zoom * 100) + "%";
  }
  document.getElementById("zoom-in").addEventListener("click", function () { setZoom(zoom + 0.25); });
  document.getElementById("zoom-out").addEventListener("click", function () { setZoom(zoom - 0.25); });
  document.getElementById("zoom-reset").addEventListener("click", function () { setZoom(1); });

  var submitted = false;
  form.addEventListener("submit", function (ev) {
    if (submitted) { ev.preventDefault(); return; }  // the server dedups too (client_event_id)
    submitted = true;
    form.elements["time_on_item_ms"].value = String(Math.round(performance.now() - started));
    var btn = form.querySelector("button[type=submit]");
    if (btn) setTimeout(function () { btn.disabled = true; }, 0);
  });

  function radios(sel) {
    var fs = form.querySelector(sel);
    return fs && !fs.disabled ? Array.prototype.slice.call(fs.querySelectorAll("input[type=radio]")) : [];
  }

  document.addEventListener("keydown", function (ev) {
    var t = ev.target;
    var tag = t && t.tagName;
    if (tag === "TEXTAREA" || (tag === "INPUT" && /^(text|password|search)$/.test(t.type))) return;
    if (ev.altKey || ev.ctrlKey || ev.metaKey) return;
    var key = ev.key;
    if (/^[1-9]$/.test(key)) {
      var opts = radios('fieldset[data-keys="digits"]');
      var r = opts[Number(key) - 1];
      if (r) { r.checked = true; r.focus(); ev.preventDefault(); }
    } else if (key === "ArrowLeft" || key === "ArrowRight" || key === "ArrowUp" || key === "ArrowDown") {
      var scale = radios('fieldset[data-keys="arrows"]');
      if (!scale.length) return;
      var i = scale.findIndex(function (x) { return x.checked; });
      var up = key === "ArrowRight" || key === "ArrowUp";
      var j = i < 0 ? (up ? 0 : scale.length - 1) : Math.min(scale.length - 1, Math.max(0, i + (up ? 1 : -1)));
      scale[j].checked = true; scale[j].focus();
      ev.preventDefault();
    } else if (key === "Enter") {
      if (tag === "A" || tag === "BUTTON" || tag === "SUMMARY") return;  // native activation
      ev.preventDefault();
      if (form.reportValidity()) form.requestSubmit();
    } else if (key === "m" || key === "M") {
      var cb = document.getElementById("mask-toggle");
      if (cb) { cb.checked = !cb.checked; ev.preventDefault(); }
    } else if (key === "+" || key === "=") { setZoom(zoom + 0.25); ev.preventDefault(); }
    else if (key === "-") { setZoom(zoom - 0.25); ev.preventDefault(); }
    else if (key === "z" || key === "Z") { setZoom(1); ev.preventDefault(); }
  });
})();
