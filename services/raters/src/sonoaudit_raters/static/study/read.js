// Reading page: time on item, keyboard shortcuts, zoom, mask toggle, and unsent choices kept
// across a reload. The page works without it (plain form posts); this only adds speed and
// resilience. Nothing here is sent anywhere but the form; storage is this tab's sessionStorage.
(function () {
  "use strict";
  var form = document.getElementById("answer-form");
  if (!form) return;

  // A page restored from the back/forward cache carries a client_event_id that may already be
  // used (the server would drop an edit as a duplicate) and a disabled button: fetch it anew.
  window.addEventListener("pageshow", function (ev) { if (ev.persisted) location.reload(); });

  var store = (function () {
    try { var s = window.sessionStorage; s.setItem("_t", "1"); s.removeItem("_t"); return s; }
    catch (e) { return null; }  // storage disabled: everything still works, minus the extras
  })();
  function get(k) { return store ? store.getItem(k) : null; }
  function put(k, v) { if (store) store.setItem(k, v); }
  function drop(k) { if (store) store.removeItem(k); }

  // Keys carry the reader id: two readers sharing a workstation tab never see each other's drafts.
  var scope = form.dataset.reader + ":" + form.dataset.item + ":" + form.dataset.step;
  var draftKey = "sonoaudit:draft:" + scope;
  var timeKey = "sonoaudit:ms:" + scope;

  // Time on item: milliseconds this item's step was open in this tab, summed over reloads.
  var carried = Number(get(timeKey)) || 0;
  var started = performance.now();
  function elapsed() { return Math.round(carried + performance.now() - started); }

  // ---- unsent choices survive a reload (only where the server shows no answer yet) ----
  function fields() {
    return Array.prototype.slice.call(form.querySelectorAll(
      "fieldset:not([disabled]) input[type=radio], fieldset:not([disabled]) input[type=checkbox], textarea"));
  }
  function saveDraft() {
    var d = {};
    fields().forEach(function (el) {
      if (el.tagName === "TEXTAREA") d[el.name] = el.value;
      else if (el.checked) (d[el.name] = d[el.name] || []).push(el.value);
    });
    put(draftKey, JSON.stringify(d));
  }
  (function restoreDraft() {
    var raw = get(draftKey);
    if (!raw || document.getElementById("form-error")) return;  // a 422 page shows the draft
    var d;
    try { d = JSON.parse(raw); } catch (e) { return; }
    var els = fields();
    var answered = {};
    els.forEach(function (el) {
      if ((el.tagName === "TEXTAREA" && el.value) || el.checked) answered[el.name] = true;
    });
    els.forEach(function (el) {
      if (answered[el.name] || !(el.name in d)) return;
      if (el.tagName === "TEXTAREA") el.value = d[el.name];
      else el.checked = d[el.name].indexOf(el.value) >= 0;
    });
  })();
  form.addEventListener("change", saveDraft);
  form.addEventListener("input", saveDraft);

  // ---- display preferences follow the reader from image to image ----
  var stage = document.getElementById("stage");
  var zoomOut = document.getElementById("zoom-level");
  var maskToggle = document.getElementById("mask-toggle");
  var zoom = 1;
  function setZoom(z) {
    zoom = Math.min(4, Math.max(0.5, Math.round(z * 4) / 4));
    stage.style.setProperty("--zoom", String(zoom));
    zoomOut.textContent = Math.round(zoom * 100) + "%";
    put("sonoaudit:zoom", String(zoom));
  }
  setZoom(Number(get("sonoaudit:zoom")) || 1);
  if (maskToggle) {
    if (get("sonoaudit:mask") === "off") maskToggle.checked = false;
    maskToggle.addEventListener("change", function () {
      put("sonoaudit:mask", maskToggle.checked ? "on" : "off");
    });
  }
  document.getElementById("zoom-in").addEventListener("click", function () { setZoom(zoom + 0.25); });
  document.getElementById("zoom-out").addEventListener("click", function () { setZoom(zoom - 0.25); });
  document.getElementById("zoom-reset").addEventListener("click", function () { setZoom(1); });

  var submitted = false;
  form.addEventListener("submit", function (ev) {
    if (submitted) { ev.preventDefault(); return; }  // the server dedups too (client_event_id)
    submitted = true;
    var ms = elapsed();
    form.elements["time_on_item_ms"].value = String(ms);
    put(timeKey, String(ms));  // a 422 re-render or a later edit goes on counting from here
    drop(draftKey);  // the server has the answers now (or re-renders them with the error)
    var btn = form.querySelector("button[type=submit]");
    if (btn) setTimeout(function () { btn.disabled = true; }, 0);
  });
  window.addEventListener("pagehide", function () { if (!submitted) put(timeKey, String(elapsed())); });

  function radios(sel) {
    var fs = form.querySelector(sel);
    return fs && !fs.disabled ? Array.prototype.slice.call(fs.querySelectorAll("input[type=radio]")) : [];
  }
  function pick(r) { r.checked = true; r.focus(); saveDraft(); }

  document.addEventListener("keydown", function (ev) {
    var t = ev.target;
    var tag = t && t.tagName;
    if (tag === "TEXTAREA" || (tag === "INPUT" && /^(text|password|search)$/.test(t.type))) return;
    if (ev.altKey || ev.ctrlKey || ev.metaKey) return;
    var key = ev.key;
    if (/^[1-9]$/.test(key)) {
      var opts = radios('fieldset[data-keys="digits"]');
      var r = opts[Number(key) - 1];
      if (r) { pick(r); ev.preventDefault(); }
    } else if (key === "ArrowLeft" || key === "ArrowRight" || key === "ArrowUp" || key === "ArrowDown") {
      var scale = radios('fieldset[data-keys="arrows"]');
      if (!scale.length) return;
      var i = scale.findIndex(function (x) { return x.checked; });
      var up = key === "ArrowRight" || key === "ArrowUp";
      var j = i < 0 ? (up ? 0 : scale.length - 1) : Math.min(scale.length - 1, Math.max(0, i + (up ? 1 : -1)));
      pick(scale[j]);
      ev.preventDefault();
    } else if (key === "Enter") {
      if (tag === "A" || tag === "BUTTON" || tag === "SUMMARY") return;  // native activation
      ev.preventDefault();
      if (form.reportValidity()) form.requestSubmit();
    } else if (key === "m" || key === "M") {
      if (maskToggle) {
        maskToggle.checked = !maskToggle.checked;
        maskToggle.dispatchEvent(new Event("change"));
        ev.preventDefault();
      }
    } else if (key === "+" || key === "=") { setZoom(zoom + 0.25); ev.preventDefault(); }
    else if (key === "-") { setZoom(zoom - 0.25); ev.preventDefault(); }
    else if (key === "z" || key === "Z") { setZoom(1); ev.preventDefault(); }
  });
})();
