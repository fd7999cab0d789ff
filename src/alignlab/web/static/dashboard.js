// One run: a uPlot chart per metric key and stage, polled every 3 s; state badges follow.
"use strict";
(() => {
  const page = alignlab.data();
  const charts = {}; // "stage|key" -> {plot, splits}
  const COLORS = { train: "#2d5b8a", eval: "#d2691e", val: "#d2691e", test: "#2e8b57" };

  // uPlot wants one shared x array: merge the splits' steps, null where a split has no value.
  function align(bySplit) {
    const splits = Object.keys(bySplit).sort();
    const xs = Array.from(new Set(splits.flatMap((s) => bySplit[s][0]))).sort((a, b) => a - b);
    const index = new Map(xs.map((x, i) => [x, i]));
    const ys = splits.map((s) => {
      const col = new Array(xs.length).fill(null);
      const [sx, sy] = bySplit[s];
      sx.forEach((x, i) => { col[index.get(x)] = sy[i]; });
      return col;
    });
    return { splits, data: [xs, ...ys] };
  }

  function makeChart(container, stage, key, aligned) {
    const box = alignlab.el("div", { class: "chart", "data-key": key });
    container.appendChild(box);
    const opts = {
      title: key,
      width: 320,
      height: 170,
      scales: { x: { time: false } },
      axes: [{ label: "step", size: 30 }, { size: 50 }],
      series: [{ label: "step" }, ...aligned.splits.map((s) => ({
        label: s, stroke: COLORS[s] || "#777", width: 1.5, spanGaps: true, points: { show: aligned.data[0].length < 40 },
      }))],
      legend: { show: true },
    };
    return { plot: new uPlot(opts, aligned.data, box), box, splits: aligned.splits.join(",") };
  }

  function update(body) {
    for (const [stage, info] of Object.entries(body.stages)) {
      const card = document.querySelector(`section.stage-card[data-stage="${CSS.escape(stage)}"]`);
      if (!card) continue;
      const stateEl = card.querySelector(".state");
      stateEl.replaceChildren(alignlab.badge(info.state, info.live));
      const container = card.querySelector(".charts");
      const keys = Object.keys(info.series);
      if (!keys.length && !container.childElementCount) {
        container.appendChild(alignlab.el("p", { class: "muted empty" }, "no metrics yet"));
      }
      for (const key of keys) {
        const aligned = align(info.series[key]);
        const id = stage + "|" + key;
        const have = charts[id];
        if (have && have.splits === aligned.splits.join(",")) {
          have.plot.setData(aligned.data);
        } else {
          if (have) { have.plot.destroy(); have.box.remove(); }
          const empty = container.querySelector(".empty");
          if (empty) empty.remove();
          charts[id] = makeChart(container, stage, key, aligned);
        }
      }
    }
  }

  async function poll() {
    try { update(await alignlab.getJSON(`/api/runs/${encodeURIComponent(page.run)}/metrics`)); } catch (e) { /* next poll */ }
  }
  poll();
  setInterval(poll, 3000);
})();
