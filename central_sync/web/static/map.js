"use strict";
// Map of posts and open incidents (Leaflet, vendored). Tiles only when configured; otherwise a
// plain background with the markers. The same data is listed as text under the map.
(function () {
  const S = window.kentongan.strings;
  const el = document.getElementById("map");
  const tileUrl = el.dataset.tileUrl;
  const map = L.map(el, {zoomControl: true, attributionControl: !!tileUrl});
  if (tileUrl) {
    L.tileLayer(tileUrl, {maxZoom: 19, attribution: el.dataset.attribution || ""}).addTo(map);
  } else {
    el.classList.add("no-tiles");
  }
  const layer = L.layerGroup().addTo(map);
  let fitted = false;

  function li(text, href, cls) {
    const item = document.createElement("li");
    if (cls) item.className = cls;
    if (href) { const a = document.createElement("a"); a.href = href; a.textContent = text; item.append(a); }
    else item.textContent = text;
    return item;
  }

  async function load() {
    const r = await fetch("/api/map", {credentials: "same-origin"});
    if (!r.ok) return;
    const data = await r.json();
    layer.clearLayers();
    const points = [];
    for (const p of data.posts) {
      if (p.lat == null) continue;
      const ok = p.status === "online";
      const m = L.circleMarker([p.lat, p.lon], {radius: 7, weight: 2, color: ok ? "#1a7f37" : "#666",
        fillColor: ok ? "#2da44e" : "#bbb", fillOpacity: 0.9});
      m.bindTooltip(`${p.name} (RT ${p.rt} / RW ${p.rw})${p.approx ? " · " + S.approx : ""}`);
      m.addTo(layer);
      points.push([p.lat, p.lon]);
    }
    for (const i of data.incidents) {
      if (i.lat == null) continue;
      const m = L.circleMarker([i.lat, i.lon], {radius: i.priority === 1 ? 13 : 10, weight: 3,
        color: "#b00", fillColor: i.state === "new" ? "#f33" : "#f99", fillOpacity: 0.7});
      m.bindTooltip(`P${i.priority} ${i.type_name} · ${i.post_name}`);
      m.on("click", () => { location.href = "/incidents/" + encodeURIComponent(i.incident_id); });
      m.addTo(layer);
      points.push([i.lat, i.lon]);
    }
    if (!fitted) {
      if (points.length) map.fitBounds(points, {padding: [30, 30], maxZoom: 16});
      else map.setView(data.centre || [-7.0, 110.42], 12);
      fitted = true;
    }
    const incList = document.getElementById("map-incidents");
    incList.replaceChildren(...(data.incidents.length ? data.incidents.map((i) =>
      li(`P${i.priority} ${i.type_name} · ${i.post_name}`, "/incidents/" + encodeURIComponent(i.incident_id),
        "p" + i.priority)) : [li(S.no_incidents)]));
    const postList = document.getElementById("map-posts");
    postList.replaceChildren(...(data.posts.length ? data.posts.map((p) =>
      li(`${p.name} · ${p.area} · RW ${p.rw} RT ${p.rt} · ${(window.kentongan.config.post_status || {})[p.status] || p.status}`, null, "status-" + p.status))
      : [li(S.no_posts)]));
  }
  const live = window.kentongan.live;
  live.on("incident", load);
  live.on("resync", load);
  live.on("open", (o) => { if (o.reconnect) load(); });
  load();
  setInterval(load, 30000);
})();
