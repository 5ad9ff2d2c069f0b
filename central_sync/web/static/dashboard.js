"use strict";
// Live incident queue: the stream announces a changed incident with its row rendered by the
// server (fetched from /fragments/incidents/<id> after the page's own actions) and puts it in
// place, kept sorted (open first, priority, newest). After a gap the stream says "resync" (or
// the page reconnects) and the whole queue is re-read.
// Each open incident's age is counted against its priority's response target.
(function () {
  const S = window.kentongan.strings;
  const tbody = document.querySelector("#queue tbody");
  const empty = document.getElementById("empty");
  const live = window.kentongan.live;

  function key(tr) {
    return [tr.dataset.open === "1" ? 0 : 1, Number(tr.dataset.priority), -Number(tr.dataset.last)];
  }
  function before(a, b) {
    const ka = key(a), kb = key(b);
    for (let i = 0; i < ka.length; i++) if (ka[i] !== kb[i]) return ka[i] < kb[i];
    return false;
  }
  function keepNote(tr, old) {
    const note = old && old.querySelector("input.note");
    if (note && note.value) { const n = tr.querySelector("input.note"); if (n) n.value = note.value; }
  }
  function place(tr) {
    const old = tbody.querySelector(`tr[data-incident-id="${CSS.escape(tr.dataset.incidentId)}"]`);
    keepNote(tr, old);
    if (old) old.remove();
    let at = null;
    for (const row of tbody.rows) { if (before(tr, row)) { at = row; break; } }
    tbody.insertBefore(tr, at);
    empty.hidden = tbody.rows.length > 0;
    ages();
  }
  function rowsOf(html) {
    const t = document.createElement("tbody");
    t.innerHTML = html.trim();
    return [...t.querySelectorAll("tr")];
  }
  function show(html) {
    const tr = rowsOf(html)[0];
    if (tr) {
      tr.classList.add("fresh");
      setTimeout(() => tr.classList.remove("fresh"), 4000);
      place(tr);
    }
  }
  async function refresh(id) {
    const r = await fetch(`/fragments/incidents/${encodeURIComponent(id)}`, {credentials: "same-origin"});
    if (!r.ok) return;
    show(await r.text());
  }
  async function resync() {
    // Rows at least as new as what the stream has delivered: the stream goes on from there.
    const at = Number(live.lastId);
    const q = Number.isInteger(at) && at > 0 ? `?at=${at}` : "";
    const r = await fetch(`/fragments/queue${q}`, {credentials: "same-origin", cache: "no-store"});
    if (!r.ok) return;
    const rows = rowsOf(await r.text());
    const notes = new Map([...tbody.querySelectorAll("tr")].map((tr) => [tr.dataset.incidentId, tr]));
    for (const tr of rows) keepNote(tr, notes.get(tr.dataset.incidentId));
    tbody.replaceChildren(...rows);
    empty.hidden = rows.length > 0;
    document.getElementById("queue").dataset.resyncedAt = String(Date.now());
    ages();
  }

  function ages() {
    const now = Date.now() / 1000;
    for (const span of tbody.querySelectorAll("span.age[data-running='1']")) {
      const secs = Math.max(0, Math.floor(now - Number(span.dataset.since)));
      const target = Number(span.dataset.target || 0);
      const mmss = Math.floor(secs / 60) + ":" + String(secs % 60).padStart(2, "0");
      span.textContent = target
        ? `${mmss} / ${S.target} ${Math.floor(target / 60)}:${String(target % 60).padStart(2, "0")}`
        : mmss;
      const late = target > 0 && secs > target;
      span.classList.toggle("late", late);
      span.title = late ? S.late : "";
    }
  }
  setInterval(ages, 1000);
  ages();

  // The stream's event carries the row, rendered by the server (an older server: fetch it).
  live.on("incident", (inc) => { if (inc.row) show(inc.row); else refresh(inc.incident_id); });
  live.on("resync", () => resync());
  live.on("open", (o) => { if (o.reconnect) resync(); });
  document.addEventListener("kentongan:changed", (ev) => refresh(ev.detail));

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
      window.kentongan.attention.refresh();
    } catch (e) {
      btn.disabled = false;
      alert(`${S.failed}: ${e.message}`);
    }
  });
})();
