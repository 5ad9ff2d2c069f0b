"use strict";
// Live incident queue: server-sent events announce a changed incident; the row is fetched
// as server-rendered HTML and put in place, kept sorted (open first, priority, newest).
(function () {
  const tbody = document.querySelector("#queue tbody");
  const live = document.getElementById("live");
  const empty = document.getElementById("empty");

  function key(tr) {
    return [tr.dataset.open === "1" ? 0 : 1, Number(tr.dataset.priority), -Number(tr.dataset.last)];
  }
  function before(a, b) {
    const ka = key(a), kb = key(b);
    for (let i = 0; i < ka.length; i++) if (ka[i] !== kb[i]) return ka[i] < kb[i];
    return false;
  }
  function place(tr) {
    const old = tbody.querySelector(`tr[data-incident-id="${CSS.escape(tr.dataset.incidentId)}"]`);
    const note = old && old.querySelector("input.note");
    if (note && note.value) { const n = tr.querySelector("input.note"); if (n) n.value = note.value; }
    if (old) old.remove();
    let at = null;
    for (const row of tbody.rows) { if (before(tr, row)) { at = row; break; } }
    tbody.insertBefore(tr, at);
    empty.hidden = tbody.rows.length > 0;
  }
  async function refresh(id) {
    const r = await fetch(`/fragments/incidents/${encodeURIComponent(id)}`, {credentials: "same-origin"});
    if (!r.ok) return;
    const t = document.createElement("tbody");
    t.innerHTML = (await r.text()).trim();
    const tr = t.querySelector("tr");
    if (tr) { tr.classList.add("fresh"); place(tr); }
  }

  function connect() {
    const es = new EventSource("/api/stream");
    es.onopen = () => { live.textContent = "live"; live.className = "live on"; };
    es.onerror = () => { live.textContent = "reconnecting"; live.className = "live off"; };
    es.addEventListener("incident", (ev) => {
      const inc = JSON.parse(ev.data);
      refresh(inc.incident_id);
    });
  }
  connect();

  tbody.addEventListener("click", async (ev) => {
    const btn = ev.target.closest("button[data-act]");
    if (!btn) return;
    const tr = btn.closest("tr");
    const note = tr.querySelector("input.note");
    btn.disabled = true;
    try {
      const out = await window.kentongan.post(
        `/api/incidents/${encodeURIComponent(tr.dataset.incidentId)}/${btn.dataset.act}`,
        {note: note ? note.value : ""});
      if (note) note.value = "";
      if (out.warning) {
        const p = document.createElement("p");
        p.className = "warning"; p.setAttribute("role", "alert"); p.textContent = out.warning;
        document.getElementById("warnings").appendChild(p);
      }
      await refresh(tr.dataset.incidentId);
    } catch (e) {
      btn.disabled = false;
      alert(e.message);
    }
  });
})();
