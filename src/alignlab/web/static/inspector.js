// Rollout inspector: each response's tokens coloured by kl, logprobs or advantages; ←/→ step through rollouts.
"use strict";
(() => {
  let data = alignlab.data();
  let field = "kl";
  const rowsEl = document.getElementById("rows");

  // Diverging white→red / white→blue for signed fields; logprobs: white (log p = 0) → orange (unlikely).
  function colour(v, scale) {
    if (v === null || v === undefined || !Number.isFinite(v) || scale <= 0) return "transparent";
    const t = Math.min(1, Math.abs(v) / scale);
    if (field === "logprobs") return `rgba(230, 120, 0, ${0.85 * t})`;
    return v >= 0 ? `rgba(214, 39, 40, ${0.8 * t})` : `rgba(31, 119, 180, ${0.8 * t})`;
  }

  function scaleOf(rows) {
    let m = 0;
    for (const r of rows) for (const v of r[field] || []) if (Number.isFinite(v)) m = Math.max(m, Math.abs(v));
    return m;
  }

  function legend(scale) {
    const el = document.getElementById("legend");
    el.replaceChildren();
    const stops = field === "logprobs" ? [0, -scale / 2, -scale] : [-scale, 0, scale];
    for (const v of stops) {
      el.appendChild(alignlab.el("span", { class: "tok", style: `background:${colour(v, scale)}` }, alignlab.fmt(v, 2)));
    }
  }

  function render() {
    const rows = data.rows;
    const scale = scaleOf(rows);
    document.getElementById("step").textContent = String(data.step);
    const pos = data.steps.indexOf(data.step);
    document.getElementById("step-pos").textContent = `(${pos + 1} of ${data.steps.length})`;
    document.getElementById("prev").disabled = pos <= 0;
    document.getElementById("next").disabled = pos >= data.steps.length - 1;
    legend(scale);
    rowsEl.replaceChildren();
    rows.forEach((r, i) => {
      const head = alignlab.el("div", { class: "rollout-head" },
        alignlab.el("b", {}, `#${i + 1}`), " reward ", alignlab.el("b", { class: "reward" }, alignlab.fmt(r.reward)),
        " · score ", alignlab.el("b", { class: "score" }, alignlab.fmt(r.score)));
      const prompt = alignlab.el("div", { class: "prompt" }, r.prompt || "");
      const toks = alignlab.el("div", { class: "tokens" });
      const pieces = r.tokens && r.tokens.length ? r.tokens : [r.response || ""];
      pieces.forEach((t, j) => {
        const vals = r[field] || [];
        const tip = ["kl", "logprobs", "ref_logprobs", "advantages"]
          .filter((k) => r[k] && r[k][j] !== undefined)
          .map((k) => `${k} ${alignlab.fmt(r[k][j])}`).join("\n");
        toks.appendChild(alignlab.el("span", { class: "tok", title: tip, style: `background:${colour(vals[j], scale)}` }, t));
      });
      rowsEl.appendChild(alignlab.el("article", { class: "rollout" }, head, prompt, toks));
    });
  }

  async function go(delta) {
    const pos = data.steps.indexOf(data.step) + delta;
    if (pos < 0 || pos >= data.steps.length) return;
    const step = data.steps[pos];
    data = await alignlab.getJSON(`/api/runs/${encodeURIComponent(data.run)}/${encodeURIComponent(data.stage)}/rollouts/${step}`);
    history.replaceState(null, "", `?step=${step}`);
    render();
  }

  function pick(name) {
    field = name;
    document.querySelector(`input[name=field][value="${name}"]`).checked = true;
    render();
  }

  document.getElementById("prev").addEventListener("click", () => go(-1));
  document.getElementById("next").addEventListener("click", () => go(1));
  for (const r of document.querySelectorAll("input[name=field]")) r.addEventListener("change", () => pick(r.value));
  document.addEventListener("keydown", (ev) => {
    if (alignlab.typing(ev) && ev.target.type !== "radio") return;
    if (ev.key === "ArrowLeft") { ev.preventDefault(); go(-1); }
    else if (ev.key === "ArrowRight") { ev.preventDefault(); go(1); }
    else if (ev.key === "k") pick("kl");
    else if (ev.key === "l") pick("logprobs");
    else if (ev.key === "a") pick("advantages");
  });
  render();
})();
