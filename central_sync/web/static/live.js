"use strict";
// The desk's live stream: EventSource on /api/stream with Last-Event-ID replay, an honest
// connection badge (live / reconnecting / offline, with the time since the last message), and a
// watchdog: the server sends a heartbeat every 10 s, so 25 s of silence means a dead stream and
// we reconnect ourselves. Pages subscribe with kentongan.live.on("incident" | "resync" | "open", fn).
(function () {
  const S = JSON.parse(document.getElementById("desk-strings").textContent);
  const C = JSON.parse(document.getElementById("desk-config").textContent);
  const badge = document.getElementById("live");
  const handlers = {incident: [], resync: [], open: []};
  let es = null, lastId = C.stream_head == null ? "" : String(C.stream_head), lastMsg = 0, state = "connecting";
  let retryTimer = null, failures = 0, everOpen = false;

  function show(next) {
    state = next;
    badge.dataset.state = next;
    badge.className = "live " + (next === "live" ? "on" : next === "offline" ? "dead" : "off");
    render();
  }
  function render() {
    let text = S[state] || state;
    if (lastMsg && state !== "live") {
      text += " · " + S.ago.replace("%(s)s", Math.round((Date.now() - lastMsg) / 1000));
    }
    badge.textContent = text;
    badge.title = lastMsg ? S.ago.replace("%(s)s", Math.round((Date.now() - lastMsg) / 1000)) : "";
  }
  function emit(kind, arg) { for (const fn of handlers[kind]) { try { fn(arg); } catch (e) { console.error(e); } } }
  function seen(ev) {
    lastMsg = Date.now();
    if (ev && ev.lastEventId) lastId = ev.lastEventId;
    if (state !== "live") show("live");
  }

  function connect() {
    clearTimeout(retryTimer);
    if (es) es.close();
    const url = "/api/stream" + (lastId ? "?last_event_id=" + encodeURIComponent(lastId) : "");
    es = new EventSource(url);
    es.addEventListener("hello", (ev) => {
      seen(ev);
      failures = 0;
      const reconnect = everOpen;
      everOpen = true;
      emit("open", {reconnect: reconnect, info: JSON.parse(ev.data)});
    });
    es.addEventListener("heartbeat", (ev) => seen(ev));
    es.addEventListener("incident", (ev) => { seen(ev); emit("incident", JSON.parse(ev.data)); });
    es.addEventListener("resync", (ev) => { seen(ev); emit("resync", JSON.parse(ev.data)); });
    es.onerror = () => {
      failures += 1;
      // EventSource retries by itself while readyState is CONNECTING; once CLOSED (an HTTP
      // error such as a proxy's 502) it never will, so we do, with a capped backoff.
      show(failures > 3 ? "offline" : "reconnecting");
      if (es.readyState === EventSource.CLOSED) {
        retryTimer = setTimeout(connect, Math.min(15000, 1000 * failures));
      }
    };
  }

  setInterval(() => {
    if (lastMsg && Date.now() - lastMsg > 25000 && state === "live") {
      show("reconnecting");        // silent too long: the stream is dead even if not closed
      connect();
    } else if (lastMsg && Date.now() - lastMsg > 60000 && state !== "offline") {
      show("offline");
    }
    render();
  }, 1000);

  window.kentongan.strings = S;
  window.kentongan.config = C;
  window.kentongan.live = {
    on(kind, fn) { handlers[kind].push(fn); },
    get lastId() { return lastId; },
    set lastId(v) { if (v) lastId = String(v); },
    get state() { return state; },
    reconnectNow: connect,
  };
  connect();
})();
