// Simulator: β and reward-weight sliders over cached samples from π_ref; the reward-vs-KL curve in SVG.
"use strict";
(() => {
  const page = alignlab.data();
  const $ = (id) => document.getElementById(id);
  let seed = 0; // which samples from π_ref
  let draw = 0; // which response is drawn from π* on them
  let pending = null;
  let last = null;

  const beta = () => Math.pow(10, parseFloat($("beta").value));

  function buildComponents(components) {
    const box = $("components");
    box.querySelectorAll(".component, .preset").forEach((n) => n.remove());
    if (!components.length) {
      box.appendChild(alignlab.el("p", { class: "component muted" }, "no reward components for this run"));
      return;
    }
    const preset = alignlab.el("select", { id: "reward-preset", class: "preset" },
      alignlab.el("option", { value: "" }, "weighted mix (sliders)"),
      ...components.map((c) => alignlab.el("option", { value: c.id }, "only " + c.label)));
    preset.addEventListener("change", () => {
      if (!preset.value) return;
      for (const s of box.querySelectorAll("input.weight")) {
        s.value = s.dataset.component === preset.value ? "1" : "0";
        s.nextElementSibling.textContent = alignlab.fmt(parseFloat(s.value), 2);
      }
      schedule();
    });
    box.appendChild(preset);
    components.forEach((c, i) => {
      const input = alignlab.el("input", {
        type: "range", min: "-1", max: "2", step: "0.05", value: i === 0 ? "1" : "0",
        class: "weight", "data-component": c.id, "aria-label": "weight of " + c.label,
      });
      const shown = alignlab.el("b", {}, i === 0 ? "1.00" : "0.00");
      input.addEventListener("input", () => { shown.textContent = alignlab.fmt(parseFloat(input.value), 2); preset.value = ""; schedule(); });
      box.appendChild(alignlab.el("label", { class: "component" }, c.label + " ", input, shown));
    });
  }

  function mix() {
    const out = {};
    for (const s of document.querySelectorAll("input.weight")) {
      const w = parseFloat(s.value);
      if (w !== 0) out[s.dataset.component] = w;
    }
    return out;
  }

  function setStatus(text, isError) {
    $("status").textContent = text;
    $("status").className = isError ? "error" : "muted";
  }

  async function simulate() {
    const m = mix();
    if (!Object.keys(m).length) { setStatus("give at least one reward component a non-zero weight", true); return; }
    setStatus("computing…");
    try {
      const body = await alignlab.postJSON("/api/simulate", {
        run: $("run").value, prompt: $("prompt").value, n: parseInt($("n").value, 10), seed, draw, beta: beta(), mix: m,
      });
      last = body;
      show(body);
      setStatus(`N = ${body.n} samples from π_ref, ${body.distinct} distinct (seed ${seed}, draw ${draw})`);
    } catch (e) {
      setStatus(e.message, true);
    }
  }

  function schedule() {
    $("beta-value").textContent = alignlab.fmt(beta(), 3);
    if (!last) return; // nothing sampled yet: wait for Generate
    clearTimeout(pending);
    pending = setTimeout(simulate, 120);
  }

  function show(b) {
    $("expected-reward").textContent = alignlab.fmt(b.expected_reward, 4);
    $("kl").textContent = alignlab.fmt(b.kl, 4);
    $("ess").textContent = `${alignlab.fmt(b.ess, 1)} of ${b.n}`;
    $("ref-reward").textContent = alignlab.fmt(b.ref_reward, 4);
    $("drawn").textContent = b.drawn.text;
    $("drawn-meta").textContent = `#${b.drawn.index} · r ${alignlab.fmt(b.drawn.reward)} · w ${alignlab.fmt(b.drawn.weight)}`;
    const top = $("top");
    top.replaceChildren(...b.top.map((t) => alignlab.el("tr", {},
      alignlab.el("td", {}, alignlab.fmt(t.weight)), alignlab.el("td", {}, alignlab.fmt(t.reward)), alignlab.el("td", {}, String(t.count)),
      alignlab.el("td", { class: "response" }, t.text))));
    plot(b);
  }

  // Reward (y) against KL (x): the curve over β, the current β as a dot, checkpoints as squares.
  function plot(b) {
    const svg = $("curve");
    const NS = "http://www.w3.org/2000/svg";
    const W = 420, H = 300, L = 52, R = 12, T = 12, B = 40;
    const pts = b.curve.map((p) => [p.kl, p.expected_reward]);
    const extra = b.eval_points.map((p) => [p.kl, p.reward]);
    const all = pts.concat(extra, [[b.kl, b.expected_reward]]);
    let [x0, x1] = [0, Math.max(...all.map((p) => p[0]), 1e-6)];
    let [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
    if (y1 - y0 < 1e-9) { y0 -= 0.5; y1 += 0.5; }
    const pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad; x1 *= 1.05;
    const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
    const sy = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
    const node = (tag, attrs, text) => {
      const n = document.createElementNS(NS, tag);
      for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
      if (text !== undefined) n.textContent = text;
      return n;
    };
    svg.replaceChildren();
    svg.appendChild(node("rect", { x: L, y: T, width: W - L - R, height: H - T - B, fill: "#fafafa", stroke: "#ccc" }));
    for (let i = 0; i <= 4; i++) {
      const xv = x0 + (i / 4) * (x1 - x0), yv = y0 + (i / 4) * (y1 - y0);
      svg.appendChild(node("text", { x: sx(xv), y: H - B + 14, "text-anchor": "middle", class: "tick" }, alignlab.fmt(xv, 2)));
      svg.appendChild(node("text", { x: L - 4, y: sy(yv) + 4, "text-anchor": "end", class: "tick" }, alignlab.fmt(yv, 2)));
    }
    svg.appendChild(node("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle", class: "axis" }, "KL(π*‖π_ref) (nats)"));
    svg.appendChild(node("text", { x: 12, y: (T + H - B) / 2, transform: `rotate(-90 12 ${(T + H - B) / 2})`, "text-anchor": "middle", class: "axis" }, "E[r]"));
    svg.appendChild(node("polyline", { points: pts.map((p) => `${sx(p[0])},${sy(p[1])}`).join(" "), fill: "none", stroke: "#2d5b8a", "stroke-width": 2 }));
    for (const p of b.eval_points) {
      svg.appendChild(node("rect", { x: sx(p.kl) - 5, y: sy(p.reward) - 5, width: 10, height: 10, fill: "#2e8b57", class: "checkpoint" }));
      svg.appendChild(node("text", { x: sx(p.kl) + 8, y: sy(p.reward) + 4, class: "tick" }, p.name));
    }
    svg.appendChild(node("circle", { cx: sx(b.kl), cy: sy(b.expected_reward), r: 6, fill: "#d62728", id: "current" }));
  }

  async function loadComponents() {
    try {
      const body = await alignlab.getJSON(`/api/simulator/${encodeURIComponent($("run").value)}/components`);
      buildComponents(body.components);
    } catch (e) { setStatus(e.message, true); }
  }

  async function ask() {
    const prompt = $("ask-prompt").value.trim();
    if (!prompt) return;
    $("ask-status").textContent = "generating (models load on first use)…";
    try {
      const body = await alignlab.postJSON("/api/answer", { run: $("run").value, prompt });
      $("answers").replaceChildren(...Object.entries(body.answers).map(([stage, text]) =>
        alignlab.el("div", { class: "answer", "data-stage": stage }, alignlab.el("h4", {}, stage), alignlab.el("pre", { class: "response" }, text))));
      $("ask-status").textContent = "";
    } catch (e) { $("ask-status").textContent = e.message; }
  }

  if (!page.run) { setStatus("no runs yet", true); return; }
  buildComponents(page.components);
  $("beta").addEventListener("input", schedule);
  $("run").addEventListener("change", () => { last = null; loadComponents(); });
  $("prompt").addEventListener("change", () => { last = null; });
  $("n").addEventListener("change", () => { last = null; });
  $("generate").addEventListener("click", () => { if (last) draw += 1; simulate(); });
  $("resample").addEventListener("click", () => { seed += 1; draw = 0; simulate(); });
  $("ask").addEventListener("click", ask);
  $("ask-prompt").addEventListener("keydown", (ev) => { if (ev.key === "Enter") ask(); });
  $("beta-value").textContent = alignlab.fmt(beta(), 3);
})();
