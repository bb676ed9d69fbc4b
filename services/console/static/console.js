// Vigil console: live updates by Server-Sent Events. The pages are
// rendered on the server; this only swaps in what the server sends.
"use strict";
(function () {
  const live = document.getElementById("live");
  // Ask only for the VMs this page shows (its rows, or the VM of a VM page).
  const keys = [];
  document.querySelectorAll("#vms tbody tr[id^='vm-']").forEach(function (tr) { keys.push(tr.id.slice(3)); });
  document.querySelectorAll("[id^='vm-status-']").forEach(function (el) { keys.push(el.id.slice(10)); });
  const params = new URLSearchParams();
  if (keys.length === 0) { params.append("vm", ""); }
  keys.forEach(function (k) { params.append("vm", k); });
  const es = new EventSource("/events?" + params.toString());
  es.onopen = function () { live.textContent = "live"; live.className = "live on"; };
  es.onerror = function () { live.textContent = "reconnecting"; live.className = "live off"; };
  es.addEventListener("reset", function () { location.reload(); });
  function fragment(html) {
    const t = document.createElement("template");
    t.innerHTML = html;
    return t.content.firstElementChild;
  }
  es.addEventListener("vm", function (e) {
    const d = JSON.parse(e.data);
    const row = document.getElementById("vm-" + d.key);
    if (row) {
      row.replaceWith(fragment("<table><tbody>" + d.html + "</tbody></table>").querySelector("tr"));
    }
    const badge = document.getElementById("vm-status-" + d.key);
    if (badge) {
      badge.textContent = d.status;
      badge.className = "badge st-" + d.status;
    }
  });
  es.addEventListener("overview", function (e) {
    const el = document.getElementById("overview");
    if (el) { el.innerHTML = JSON.parse(e.data).html; }
  });
  es.addEventListener("alert", function (e) {
    const d = JSON.parse(e.data);
    const table = document.getElementById("alerts");
    if (!table) { return; }
    const f = table.dataset;
    if ((f.severity && f.severity !== d.severity) || (f.code && f.code !== d.code) || (f.vm && f.vm !== d.vm) || (f.state && f.state !== d.state)) { return; }
    const tr = fragment("<table><tbody>" + d.html + "</tbody></table>").querySelector("tr");
    table.tBodies[0].prepend(tr);
  });
})();
