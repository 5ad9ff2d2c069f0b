"use strict";
// Attention for unacknowledged P1 incidents: a banner that stays until each is acknowledged,
// the locally served alarm sound looping while any unmuted one is waiting (mute is per incident,
// kept for this browser tab only), a flashing title and a desktop notification when allowed.
// The list is read from the server (/fragments/attention) on load, on a resync and whenever the
// live stream reports a change that can touch it, so the banner can never drift from the queue.
(function () {
  const S = window.kentongan.strings;
  const banner = document.getElementById("attention");
  const list = document.getElementById("attention-list");
  const audio = document.getElementById("alarm-sound");
  const soundBtn = document.getElementById("sound-enable");
  const notifyBtn = document.getElementById("notify-enable");
  const baseTitle = document.title;
  const notified = new Set();
  let waiting = [], flash = null, flip = false, fetching = null, again = false;

  function muted() {
    try { return new Set(JSON.parse(sessionStorage.getItem("kentongan.muted") || "[]")); }
    catch (e) { return new Set(); }
  }
  function setMuted(id, on) {
    const m = muted();
    if (on) m.add(id); else m.delete(id);
    sessionStorage.setItem("kentongan.muted", JSON.stringify([...m]));
    apply();
  }
  function typeName(inc) { return inc.type_name || inc.type; }
  function age(inc) {
    const s = Math.max(0, Math.floor(Date.now() / 1000 - inc.opened_at));
    return Math.floor(s / 60) + ":" + String(s % 60).padStart(2, "0");
  }

  function apply() {
    const m = muted();
    banner.hidden = waiting.length === 0;
    document.body.classList.toggle("has-attention", waiting.length > 0);
    list.replaceChildren(...waiting.map((inc) => {
      const li = document.createElement("li");
      li.dataset.incidentId = inc.incident_id;
      const a = document.createElement("a");
      a.href = "/incidents/" + encodeURIComponent(inc.incident_id);
      a.textContent = `${typeName(inc)} · ${inc.post_name}` +
        (inc.rt ? ` · RT ${inc.rt} / RW ${inc.rw}` : "");
      const t = document.createElement("span");
      t.className = "age"; t.dataset.since = inc.opened_at; t.textContent = age(inc);
      const ack = document.createElement("button");
      ack.type = "button"; ack.className = "primary"; ack.dataset.ack = inc.incident_id;
      ack.textContent = S.acknowledge;
      const mute = document.createElement("button");
      mute.type = "button"; mute.dataset.mute = inc.incident_id;
      mute.textContent = m.has(inc.incident_id) ? S.unmute : S.mute;
      mute.setAttribute("aria-pressed", m.has(inc.incident_id) ? "true" : "false");
      li.append(a, " ", t, " ", ack, " ", mute);
      return li;
    }));
    const audible = waiting.some((inc) => !m.has(inc.incident_id));
    if (audible) {
      audio.loop = true;
      if (audio.paused) {
        const p = audio.play();
        if (p) p.then(() => { soundBtn.hidden = true; }, () => { soundBtn.hidden = false; });
      }
    } else if (!audio.paused) {
      audio.pause(); audio.currentTime = 0;
    }
    if (waiting.length && !flash) {
      flash = setInterval(() => {
        flip = !flip;
        document.title = flip ? `(${waiting.length}) ${S.p1}! ${baseTitle}` : baseTitle;
      }, 1000);
    } else if (!waiting.length && flash) {
      clearInterval(flash); flash = null; document.title = baseTitle;
    }
    if ("Notification" in window) {
      notifyBtn.hidden = !(waiting.length && Notification.permission === "default");
      if (Notification.permission === "granted") {
        for (const inc of waiting) {
          if (notified.has(inc.incident_id)) continue;
          notified.add(inc.incident_id);
          try {
            new Notification(`${S.p1}: ${typeName(inc)}`,
              {body: inc.post_name, tag: inc.incident_id, requireInteraction: true});
          } catch (e) { /* some browsers only allow notifications from a service worker */ }
        }
      }
    }
  }

  async function refresh() {
    if (fetching) { again = true; return fetching; }
    fetching = (async () => {
      try {
        // "no-cache": the browser revalidates with the ETag; an unchanged banner is a 304.
        const r = await fetch("/fragments/attention", {credentials: "same-origin", cache: "no-cache"});
        if (r.ok) {
          waiting = await r.json();
          apply();
        }
      } finally {
        fetching = null;
        if (again) { again = false; refresh(); }
      }
    })();
    return fetching;
  }

  banner.addEventListener("click", async (ev) => {
    const ack = ev.target.closest("button[data-ack]");
    const mute = ev.target.closest("button[data-mute]");
    if (mute) { setMuted(mute.dataset.mute, !muted().has(mute.dataset.mute)); return; }
    if (!ack) return;
    ack.disabled = true;
    try {
      await window.kentongan.post(`/api/incidents/${encodeURIComponent(ack.dataset.ack)}/ack`, {note: ""});
      document.dispatchEvent(new CustomEvent("kentongan:changed", {detail: ack.dataset.ack}));
      await refresh();
    } catch (e) { ack.disabled = false; alert(`${S.failed}: ${e.message}`); }
  });
  soundBtn.addEventListener("click", () => { audio.play().then(() => { soundBtn.hidden = true; }, () => {}); });
  notifyBtn.addEventListener("click", () => { Notification.requestPermission().then(apply); });
  setInterval(() => {
    for (const t of list.querySelectorAll(".age")) {
      t.textContent = age({opened_at: Number(t.dataset.since)});
    }
  }, 1000);

  window.kentongan.attention = {refresh, get waiting() { return waiting; }};
  const live = window.kentongan.live;
  // Only a P1 can join the banner (an incident's priority never drops) and only one on it can
  // leave; while a read is in flight it may predate this change, so read again after it.
  live.on("incident", (inc) => {
    if (inc.priority === 1 || fetching || waiting.some((w) => w.incident_id === inc.incident_id)) refresh();
  });
  live.on("resync", () => refresh());
  live.on("open", (o) => { if (o.reconnect) refresh(); });
  refresh();
})();
