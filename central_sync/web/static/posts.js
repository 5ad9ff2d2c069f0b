"use strict";
// Post overview buttons: test chirp, stop siren (staff), RT notices (RT admins).
document.addEventListener("click", async (ev) => {
  const btn = ev.target.closest("button[data-cmd]");
  if (!btn) return;
  const node = btn.dataset.node, cmd = btn.dataset.cmd;
  const result = document.getElementById("result");
  let body = {};
  if (cmd === "notice") {
    body = {incident_type: document.querySelector(`select[data-notice-for="${CSS.escape(node)}"]`).value};
  }
  btn.disabled = true;
  try {
    const out = await window.kentongan.post(`/api/nodes/${encodeURIComponent(node)}/${cmd}`, body);
    const S = window.kentongan.strings || {};
    result.textContent = `${out.action} -> ${node}: ${out.sent ? S.sent : S.not_sent} (${out.command_id})`;
  } catch (e) {
    result.textContent = `${(window.kentongan.strings || {}).failed}: ${e.message}`;
  } finally {
    btn.disabled = false;
  }
});
