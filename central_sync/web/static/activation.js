"use strict";
// One activation: counts and per-post confirmations, polled once a second (only what changed).
(() => {
  const box = document.getElementById("activation");
  if (!box) return;
  const id = box.dataset.activation;
  const words = JSON.parse(document.getElementById("siren-states").textContent || "{}");
  const tbody = document.querySelector("#activation-posts tbody");
  let since = null;
  function row(p) {
    let tr = tbody.querySelector(`tr[data-node-id="${CSS.escape(p.node_id)}"]`);
    if (!tr) {
      tr = document.createElement("tr");
      tr.dataset.nodeId = p.node_id;
      for (const cls of ["post", "state", "detail"]) {
        const td = document.createElement("td");
        td.className = cls;
        tr.appendChild(td);
      }
      tr.children[0].textContent = p.post_name || p.node_id;
      tbody.appendChild(tr);
    }
    tr.className = `siren-${p.state}`;
    tr.querySelector(".state").textContent = words[p.state] || p.state;
    tr.querySelector(".detail").textContent = p.detail || "-";
  }
  async function poll() {
    try {
      const q = since === null ? "" : `?answered_after=${since}`;
      const r = await fetch(`/api/sirens/activations/${encodeURIComponent(id)}${q}`, {credentials: "same-origin"});
      if (r.ok) {
        const data = await r.json();
        for (const k of ["confirmed", "failed", "pending", "total"]) {
          document.getElementById(`n-${k}`).textContent = data.counts[k];
        }
        document.getElementById("s-confirmed").textContent = data.stops.confirmed;
        document.getElementById("s-pending").textContent = data.stops.pending;
        for (const p of data.posts) row(p);
        since = data.now - 5;  // overlap: an answer committed while we read is not missed
      }
    } finally {
      setTimeout(poll, 1000);
    }
  }
  setTimeout(poll, 1000);
  document.getElementById("stop-group").addEventListener("click", async (ev) => {
    ev.target.disabled = true;
    const result = document.getElementById("result");
    try {
      const out = await window.kentongan.post(`/api/sirens/activations/${encodeURIComponent(id)}/stop`, {});
      result.textContent = `${words.stopping || "stop"}: ${out.stops}`;
    } catch (e) {
      result.textContent = `${(window.kentongan.strings || {}).failed || "Failed"}: ${e.message}`;
    } finally {
      ev.target.disabled = false;
    }
  });
})();
