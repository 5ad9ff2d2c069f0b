"use strict";
// Central's own link to the broker: polls /api/central-link and shows the banner while central
// is blind (no ingest process connected, or no message from any post lately). While blind the
// post states read "unknown"; the post lists refresh themselves from the server.
(function () {
  const banner = document.getElementById("central-link");
  if (!banner) return;
  const reason = document.getElementById("central-link-reason");
  const S = (window.kentongan && window.kentongan.strings) || {};
  async function poll() {
    try {
      const r = await fetch("/api/central-link", {credentials: "same-origin", cache: "no-store"});
      if (r.ok) {
        const s = await r.json();
        banner.hidden = !s.blind;
        banner.dataset.blind = s.blind ? "1" : "0";
        if (reason && s.reason !== reason.dataset.reason) {
          reason.dataset.reason = s.reason;
          if (s.reason === "quiet" && S.link_quiet) reason.textContent = S.link_quiet;
          else if (s.reason === "no_ingest" && S.link_no_ingest) reason.textContent = S.link_no_ingest;
        }
        document.body.classList.toggle("central-blind", !!s.blind);
      }
    } catch (e) { /* the live badge already says the web process is unreachable */ }
  }
  poll();
  setInterval(poll, 5000);
})();
