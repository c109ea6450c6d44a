// The Sluice dashboard: polls /v1/admin/dashboard every two seconds with the admin key
// kept in sessionStorage, and renders it with textContent only (no markup from data).
"use strict";
(function () {
  const STORE = "sluice-admin-key";
  const EVERY_MS = 2000;
  const $ = (id) => document.getElementById(id);
  let timer = null;

  const fmt = (v, digits) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
  const set = (id, text) => { $(id).textContent = text; };

  function rows(id, items, cells) {
    const body = $(id);
    body.replaceChildren();
    for (const item of items) {
      const tr = document.createElement("tr");
      for (const [text, cls] of cells(item)) {
        const td = document.createElement("td");
        td.textContent = text;
        if (cls) td.className = cls;
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
  }

  function render(d) {
    set("jobs-per-s", fmt(d.jobs_per_s, 1));
    set("error-rate", d.error_rate === null ? "–" : (100 * d.error_rate).toFixed(1) + " %");
    const l = d.latency_ms || {};
    set("p50", fmt(l.p50, 0));
    set("p95", fmt(l.p95, 0));
    set("p99", fmt(l.p99, 0));
    set("in-flight", String(d.in_flight));
    set("workers", String(d.workers));
    rows("queues", d.queues, (q) => [[q.priority], [String(q.depth)], [String(q.lag)], [fmt(q.oldest_age_s, 1)]]);
    rows("breakers", d.breakers, (b) => [[b.deployment], [b.state, b.state], [String(b.workers_not_closed)]]);
    rows("tenants", d.tenants, (t) => [[t.tenant], [String(t.input_tokens)], [String(t.output_tokens)], [fmt(t.cost_usd, 4)]]);
    rows("budgets", d.budgets, (b) => [
      [b.tenant],
      [b.tokens_limit ? b.tokens_used + " / " + b.tokens_limit : "–"],
      [b.cost_limit_usd ? fmt(b.cost_used_usd, 4) + " / " + fmt(b.cost_limit_usd, 2) : "–"],
      [(100 * b.ratio).toFixed(1) + " %", b.ratio >= 0.8 ? "open" : ""],
    ]);
    set("status", "updated " + new Date(d.at_ms).toLocaleTimeString());
  }

  function showError(text) {
    $("error").textContent = text;
    $("error").hidden = !text;
  }

  function logout(reason) {
    sessionStorage.removeItem(STORE);
    if (timer) clearInterval(timer);
    timer = null;
    $("board").hidden = true;
    $("login").hidden = false;
    showError(reason);
  }

  async function refresh() {
    const key = sessionStorage.getItem(STORE);
    if (!key) return logout("");
    try {
      const r = await fetch("/v1/admin/dashboard", {
        headers: { Authorization: "Bearer " + key },
        cache: "no-store",
      });
      if (r.status === 401 || r.status === 403) return logout("That is not the admin key.");
      if (!r.ok) return showError("The dashboard endpoint answered " + r.status + "; retrying.");
      render(await r.json());
      showError("");
    } catch (e) {
      showError("Cannot reach ingest; retrying.");
    }
  }

  function start() {
    $("login").hidden = true;
    $("board").hidden = false;
    refresh();
    if (!timer) timer = setInterval(refresh, EVERY_MS);
  }

  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(STORE, $("key").value);
    $("key").value = "";
    start();
  });
  if (sessionStorage.getItem(STORE)) start();
})();
