// Drives a real headless Chromium against the gateway and prints what it saw as one JSON object:
// the /docs page (the operations it renders, a "Try it out" call and the reply it shows, every
// URL the page loaded), then fetch() calls from pages of other origins (CORS).
// Usage: node browser.cjs CHROMIUM BASE_URL ALLOWED_ORIGIN REFUSED_ORIGIN
"use strict";

const { chromium } = require("playwright-core");

const [executablePath, base, allowed, refused] = process.argv.slice(2);
const FLAGS = [
  "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

async function docs(browser) {
  const page = await browser.newPage();
  const loaded = [];
  const problems = [];
  page.on("request", (request) => loaded.push(request.url()));
  page.on("pageerror", (error) => problems.push(String(error)));
  page.on("console", (message) => { if (message.type() === "error") problems.push(message.text()); });
  await page.goto(`${base}/docs`, { waitUntil: "networkidle" });
  await page.waitForSelector(".opblock", { timeout: 20000 });
  const operations = await page.$$eval(".opblock-summary", (nodes) => nodes.map((node) => {
    const method = node.querySelector(".opblock-summary-method");
    const path = node.querySelector(".opblock-summary-path");
    return `${method ? method.textContent.trim() : "?"} ${path ? path.getAttribute("data-path") || path.textContent.trim() : "?"}`;
  }));
  const title = await page.$eval(".info .title", (node) => node.textContent.trim());
  // Try it out: GET /v1/hello/{name} with a name typed in.
  const block = page.locator("#operations-Shop-Shop_SayHello");
  await block.locator(".opblock-summary").click();
  await block.locator(".try-out__btn").click();
  await block.locator('input[placeholder="name"]').fill("Ada");
  await block.locator(".execute").click();
  const shown = block.locator(".live-responses-table .response-col_description pre");
  await shown.first().waitFor({ timeout: 20000 });
  const reply = await shown.first().textContent();
  const status = await block.locator(".live-responses-table tbody .response-col_status").first().textContent();
  await page.close();
  return { title, operations, reply, status: status.trim(), loaded, problems };
}

async function crossOrigin(browser, origin) {
  // A page of `origin` (another web server): its fetch() to the gateway is cross-origin, with
  // a JSON body and a custom header, so Chromium sends a preflight first.
  const context = await browser.newContext();
  const page = await context.newPage();
  const messages = [];
  page.on("console", (message) => messages.push(message.text()));
  await page.goto(`${origin}/`);
  const result = await page.evaluate(async (gateway) => {
    try {
      const answer = await fetch(`${gateway}/v1/shelves/s1/books`, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-Request-Id": "browser-1" },
        body: JSON.stringify({ id: "b7", title: "Dune" }),
      });
      return { ok: true, status: answer.status, body: await answer.json() };
    } catch (error) {
      return { ok: false, error: String(error) };
    }
  }, base);
  await context.close();
  return { ...result, messages };
}

async function main() {
  const browser = await chromium.launch({ executablePath, args: FLAGS, headless: true });
  try {
    const out = { docs: await docs(browser) };
    out.allowed = await crossOrigin(browser, allowed);
    out.refused = await crossOrigin(browser, refused);
    console.log(JSON.stringify(out));
  } finally {
    await browser.close();
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
