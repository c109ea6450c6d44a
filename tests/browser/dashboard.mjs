// Drives the live dashboard in headless Chromium (playwright-core, Debian's chromium):
// logs in with the admin key, reads the tiles and tables twice a few seconds apart while a
// workload runs, saves a screenshot, and prints what it read as one JSON line. Exits
// non-zero when the page does not render or its numbers do not move.
//
// Usage: node dashboard.mjs BASE_URL ADMIN_KEY SCREENSHOT_PATH
// (NODE_PATH names the node_modules holding playwright-core; CHROMIUM the browser binary.)
import { createRequire } from "node:module";
import { mkdirSync } from "node:fs";
import { dirname } from "node:path";

const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core");
const [base, key, shot] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

const browser = await chromium.launch({
  executablePath,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
let failed = null;
const read = (page) => page.evaluate(() => {
  const text = (id) => document.getElementById(id).textContent;
  const cells = (id) => [...document.querySelectorAll(`#${id} tr`)].map((tr) => [...tr.children].map((td) => td.textContent));
  return {
    jobs_per_s: text("jobs-per-s"), error_rate: text("error-rate"), p50: text("p50"), p95: text("p95"),
    p99: text("p99"), in_flight: text("in-flight"), workers: text("workers"), status: text("status"),
    queues: cells("queues"), breakers: cells("breakers"), tenants: cells("tenants"), budgets: cells("budgets"),
  };
});
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(base + "/dashboard");
  await page.fill("#key", key);
  await page.click("button[type=submit]");
  // Rendered: a worker reported and a tenant used tokens.
  await page.waitForFunction(() => document.getElementById("workers").textContent !== "–"
    && document.querySelectorAll("#tenants tr").length > 0, null, { timeout: 20000 });
  const first = await read(page);
  const tokens = (r) => r.tenants.reduce((n, row) => n + Number(row[1]) + Number(row[2]), 0);
  await page.waitForFunction((before) => {
    const rows = [...document.querySelectorAll("#tenants tr")];
    const now = rows.reduce((n, tr) => n + Number(tr.children[1].textContent) + Number(tr.children[2].textContent), 0);
    return now > before;
  }, tokens(first), { timeout: 20000 });
  const second = await read(page);
  mkdirSync(dirname(shot), { recursive: true });
  await page.screenshot({ path: shot, fullPage: true });
  const url = page.url();
  if (url.includes(key)) failed = "the admin key appeared in the URL";
  if (errors.length) failed = "script errors: " + errors.join("; ");
  console.log(JSON.stringify({ first, second, tokens_first: tokens(first), tokens_second: tokens(second), url }));
} catch (e) {
  failed = String(e);
} finally {
  await browser.close();
}
if (failed) {
  console.error(failed);
  process.exit(1);
}
