// Shared helpers for alignlab's pages: the session token, JSON in and out, safe element building.
"use strict";
const alignlab = (() => {
  const meta = document.querySelector('meta[name="alignlab-token"]');
  const token = meta ? meta.content : "";

  function data(id = "page-data") {
    const el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  }

  async function answer(res) {
    let body = null;
    try { body = await res.json(); } catch (e) { body = null; }
    if (!res.ok) {
      const msg = body && body.error ? body.error : res.status + " " + res.statusText;
      throw new Error(msg);
    }
    return body;
  }

  async function getJSON(url) {
    return answer(await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" }));
  }

  async function postJSON(url, body) {
    return answer(await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-Alignlab-Token": token },
      body: JSON.stringify(body),
    }));
  }

  // el("span", {class: "x", title: "t"}, "text", child...): text is always set as text, never parsed as HTML.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
    }
    return node;
  }

  function fmt(x, digits = 3) {
    if (x === null || x === undefined || Number.isNaN(x)) return "–";
    const a = Math.abs(x);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return x.toExponential(2);
    return x.toFixed(digits);
  }

  function typing(ev) {
    const t = ev.target;
    return t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable);
  }

  function badge(state, live) {
    const frag = document.createDocumentFragment();
    frag.appendChild(el("span", { class: "badge " + state }, state));
    if (live) frag.appendChild(el("span", { class: "badge live" }, "live"));
    return frag;
  }

  return { token, data, getJSON, postJSON, el, fmt, typing, badge };
})();
