// Runs list: refresh each stage's state badge every 5 s.
"use strict";
(() => {
  async function refresh() {
    let body;
    try { body = await alignlab.getJSON("/api/runs"); } catch (e) { return; }
    for (const run of body.runs) {
      const row = document.querySelector(`tr[data-run="${CSS.escape(run.id)}"]`);
      if (!row) continue;
      const cell = row.querySelector("td.stages");
      cell.replaceChildren();
      for (const s of run.stages) {
        const span = alignlab.el("span", { class: "stage", "data-stage": s.name }, s.name + " ");
        span.appendChild(alignlab.badge(s.state, s.live));
        cell.appendChild(span);
        cell.appendChild(document.createTextNode(" "));
      }
    }
  }
  setInterval(refresh, 5000);
})();
