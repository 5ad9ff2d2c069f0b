"use strict";
// One incident: lifecycle buttons, the age against the response target, and a reload when the
// live stream reports a change to this incident (so its state and events stay current).
(function () {
  const S = window.kentongan.strings;
  const form = document.getElementById("inc-actions");
  const stateEl = document.getElementById("inc-state");
  const id = form ? form.dataset.incidentId : null;
  if (form) {
    form.addEventListener("click", async (ev) => {
      const btn = ev.target.closest("button[data-act]");
      if (!btn) return;
      btn.disabled = true;
      try {
        await window.kentongan.post(`/api/incidents/${encodeURIComponent(id)}/${btn.dataset.act}`,
          {note: form.querySelector("input.note").value});
        location.reload();
      } catch (e) { btn.disabled = false; alert(`${S.failed}: ${e.message}`); }
    });
  }
  window.kentongan.live.on("incident", (inc) => {
    // Reload when this incident's state or its events changed (and no note is being typed).
    const note = form && form.querySelector("input.note");
    if (stateEl && inc.incident_id === stateEl.dataset.incidentId &&
        (inc.state !== stateEl.dataset.state || String(inc.event_count) !== stateEl.dataset.events) &&
        !(note && note.value && inc.state === stateEl.dataset.state)) location.reload();
  });
  function ages() {
    for (const span of document.querySelectorAll("span.age[data-running='1']")) {
      const secs = Math.max(0, Math.floor(Date.now() / 1000 - Number(span.dataset.since)));
      const target = Number(span.dataset.target || 0);
      span.textContent = `${Math.floor(secs / 60)}:${String(secs % 60).padStart(2, "0")}` +
        (target ? ` / ${S.target} ${Math.floor(target / 60)}:${String(target % 60).padStart(2, "0")}` : "");
      span.classList.toggle("late", target > 0 && secs > target);
    }
  }
  setInterval(ages, 1000);
  ages();
})();
