// Labelling: pairwise (A / B / tie / skip) and K-wise ranking (keys or drag), annotator kept in localStorage.
"use strict";
(() => {
  const page = alignlab.data();
  if (!page.store) return;
  const $ = (id) => document.getElementById(id);
  const kind = page.kind;
  let task = null;
  let order = []; // ranking: response ids, best first, as chosen so far
  let busy = false;

  const annotatorEl = $("annotator");
  annotatorEl.value = localStorage.getItem("alignlab.annotator") || "";

  function annotator() { return annotatorEl.value.trim(); }

  function status(text, isError) { $("status").textContent = text; $("status").className = isError ? "error" : "muted"; }

  function showProgress(p) { if (p) $("progress").textContent = `${p.done} / ${p.total}`; }

  async function next() {
    if (!annotator()) { status("type your annotator name first", true); annotatorEl.focus(); return; }
    try {
      const body = await alignlab.getJSON(`/api/label/next?annotator=${encodeURIComponent(annotator())}&kind=${kind}`);
      task = body.task;
      showProgress(body.progress);
      render();
    } catch (e) { status(e.message, true); }
  }

  function card(letter, r, extra) {
    return alignlab.el("div", Object.assign({ class: "card", "data-id": r.id }, extra || {}),
      alignlab.el("div", { class: "card-head" }, alignlab.el("kbd", {}, letter)), alignlab.el("pre", { class: "response" }, r.text));
  }

  function render() {
    $("reason").value = "";
    $("task").hidden = !task;
    if (!task) { status("nothing left to label for " + annotator() + " — thank you"); return; }
    status(`task ${task.task_id}`);
    $("prompt").textContent = task.prompt;
    if (kind === "pair") {
      const [a, b] = task.responses;
      $("pair").replaceChildren(
        card("A (1)", a, { onclick: () => submit({ choice: "A" }) }),
        card("B (2)", b, { onclick: () => submit({ choice: "B" }) }),
        alignlab.el("div", { class: "pair-buttons" },
          alignlab.el("button", { onclick: () => submit({ choice: "tie" }) }, "tie (t)"),
          alignlab.el("button", { onclick: () => submit({ choice: "skip" }) }, "skip (s)")));
    } else {
      order = [];
      renderRanking();
    }
  }

  // Ranked items first (in the chosen order), then the rest in their shown order; drag to reorder.
  function renderRanking() {
    const list = $("ranking");
    const ids = task.responses.map((r) => r.id);
    const shown = order.concat(ids.filter((id) => !order.includes(id)));
    list.replaceChildren(...shown.map((id) => {
      const k = ids.indexOf(id);
      const r = task.responses[k];
      const rank = order.indexOf(id);
      const li = card(String(k + 1), r, { draggable: "true", class: "card" + (rank >= 0 ? " ranked" : "") });
      li.querySelector(".card-head").appendChild(alignlab.el("span", { class: "rank" }, rank >= 0 ? `rank ${rank + 1}` : "unranked"));
      li.addEventListener("dragstart", (ev) => { ev.dataTransfer.setData("text/plain", String(id)); });
      li.addEventListener("dragover", (ev) => ev.preventDefault());
      li.addEventListener("drop", (ev) => {
        ev.preventDefault();
        const moved = parseInt(ev.dataTransfer.getData("text/plain"), 10);
        const now = shown.filter((x) => x !== moved);
        now.splice(now.indexOf(id), 0, moved);
        order = now; // dragging ranks every item
        renderRanking();
      });
      return alignlab.el("li", {}, li);
    }));
  }

  async function submit(label) {
    if (!task || busy) return;
    busy = true;
    try {
      const body = await alignlab.postJSON("/api/label", Object.assign({
        task_id: task.task_id, kind, annotator: annotator(), reason: $("reason").value || null,
      }, label));
      showProgress(body.progress);
      await next();
      refreshAgreement();
    } catch (e) { status(e.message, true); } finally { busy = false; }
  }

  function submitRanking() {
    const ids = task.responses.map((r) => r.id);
    if (order.length < ids.length - 1) { status(`rank all ${ids.length} responses first (${order.length} ranked)`, true); return; }
    const full = order.concat(ids.filter((id) => !order.includes(id)));
    // the store's convention: ranking[i] is the rank of the task's i-th response (1 = best)
    submit({ ranking: ids.map((id) => full.indexOf(id) + 1) });
  }

  async function refreshAgreement() {
    try {
      const a = (await alignlab.getJSON("/api/label/agreement"))[kind] || {};
      if (!a.method) {
        const who = (a.annotators || []).join(", ") || "nobody yet";
        $("agreement").textContent = `needs two annotators on the same tasks (labelled so far by: ${who})`;
        return;
      }
      const show = (v) => (Number.isInteger(v) ? String(v) : typeof v === "number" ? alignlab.fmt(v) : Array.isArray(v) ? v.join(", ") : v === null ? "–" : String(v));
      const rows = Object.entries(a).map(([k, v]) => alignlab.el("tr", {}, alignlab.el("th", {}, k), alignlab.el("td", {}, show(v))));
      $("agreement").replaceChildren(alignlab.el("table", { class: "agreement" }, alignlab.el("tbody", {}, ...rows)));
    } catch (e) { /* agreement is optional */ }
  }

  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && alignlab.typing(ev)) { ev.target.blur(); return; }
    if (alignlab.typing(ev) || !task) return;
    if (kind === "pair") {
      const k = ev.key.toLowerCase();
      if (k === "1" || k === "a") submit({ choice: "A" });
      else if (k === "2" || k === "b") submit({ choice: "B" });
      else if (k === "t") submit({ choice: "tie" });
      else if (k === "s") submit({ choice: "skip" });
      return;
    }
    const n = parseInt(ev.key, 10);
    if (n >= 1 && n <= task.responses.length) {
      const id = task.responses[n - 1].id;
      if (!order.includes(id)) { order.push(id); renderRanking(); }
    } else if (ev.key === "Backspace") { ev.preventDefault(); order.pop(); renderRanking(); }
    else if (ev.key === "Enter") { ev.preventDefault(); submitRanking(); }
    else if (ev.key.toLowerCase() === "s") submit({ choice: "skip" });
  });
  annotatorEl.addEventListener("change", () => { localStorage.setItem("alignlab.annotator", annotator()); next(); });
  $("make-tasks").addEventListener("click", async () => {
    try {
      const body = await alignlab.postJSON("/api/label/tasks", { run: $("task-run").value, kind });
      status(`${body.tasks} new ${kind} task(s) from run ${body.run}`);
      if (!task) next();
    } catch (e) { status(e.message, true); }
  });
  if ($("submit")) $("submit").addEventListener("click", submitRanking);
  next();
  refreshAgreement();
})();
