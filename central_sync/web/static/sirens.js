"use strict";
// Group activation form: RT / RW / kelurahan / city (the city asks for confirmation first).
(() => {
  const form = document.getElementById("group-form");
  if (!form) return;
  const result = document.getElementById("result");
  const dialog = document.getElementById("city-confirm");
  async function start(confirm) {
    const scope = document.getElementById("group-scope").value;
    const area = (document.getElementById("group-area").value || "").split("/");
    const body = {scope, incident_type: document.getElementById("group-type").value, confirm};
    if (scope !== "city") {
      body.kelurahan_code = area[0];
      if (scope !== "kelurahan") body.rw = Number(area[1]);
      if (scope === "rt") body.rt = Number(area[2]);
    }
    try {
      const out = await window.kentongan.post("/api/sirens/groups", body);
      window.location.href = `/sirens/${encodeURIComponent(out.activation_id)}`;
    } catch (e) {
      result.textContent = `${(window.kentongan.strings || {}).failed || "Failed"}: ${e.message}`;
    }
  }
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (document.getElementById("group-scope").value === "city") {
      dialog.showModal();
    } else {
      start(false);
    }
  });
  document.getElementById("city-yes").addEventListener("click", () => { dialog.close(); start(true); });
  document.getElementById("city-no").addEventListener("click", () => dialog.close());
})();
