// The fxcast UI in a real headless Chromium against a real `fxcast serve`:
// prices tick, a Buy fills, a far-off order is rejected with its reason.
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const binary = process.env.FXCAST_BIN || join(process.env.CARGO_TARGET_DIR || join(root, "target"), "debug", "fxcast");
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";

let server, base, browser, page;
const pageErrors = [];

function startServer() {
  const dataDir = mkdtempSync(join(tmpdir(), "fxcast-ui-"));
  const child = spawn(binary, [
    "serve", "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
    "--data-dir", dataDir, "--tick-interval", "100ms",
  ], { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, RUST_LOG: "info" } });
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stderr });
    const timer = setTimeout(() => reject(new Error("fxcast serve did not log its addresses")), 30000);
    lines.on("line", (line) => {
      const match = line.match(/fxcast listening .*http=(\S+)/);
      if (match) {
        clearTimeout(timer);
        resolve({ child, base: `http://${match[1]}` });
      }
    });
    child.on("error", (error) => reject(new Error(`cannot start ${binary}: ${error.message}`)));
    child.on("exit", (code) => reject(new Error(`fxcast serve exited with ${code}`)));
  });
}

before(async () => {
  ({ child: server, base } = await startServer());
  browser = await chromium.launch({
    executablePath: chromiumPath,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
  page = await browser.newPage({ viewport: { width: 1280, height: 620 } });
  page.on("pageerror", (error) => pageErrors.push(error));
  await page.goto(base + "/");
});

afterEach(() => {
  assert.deepEqual(pageErrors.map(String), [], "the page raised no errors");
});

after(async () => {
  await browser?.close();
  server?.kill("SIGTERM");
});

test("the board shows prices ticking within a second", async () => {
  const bid = page.getByTestId("bid-USD_JPY");
  // The board's rows appear once the symbol list has loaded; until then the cell does not exist.
  await page.waitForFunction(() => /^\d+\.\d{3}$/.test(document.querySelector("[data-testid=bid-USD_JPY]")?.textContent ?? ""), null, { timeout: 5000 });
  const seq = () => page.locator("tr[data-symbol=USD_JPY] td.seq").textContent();
  const first = Number(await seq());
  await page.waitForFunction((s) => Number(document.querySelector("tr[data-symbol=USD_JPY] td.seq")?.textContent ?? 0) > s, first, { timeout: 2000 });
  assert.match(await bid.textContent(), /^\d+\.\d{3}$/);
  assert.equal(await page.locator("#status .text").textContent(), "live");
  // The memory transport offers no Momento grant: rates come over the gateway.
  assert.equal(await page.locator("#path").getAttribute("data-path"), "gateway");
  assert.match(await page.locator("#path").textContent(), /gateway WebSocket/);
  assert.equal(await page.evaluate(() => window.fxcastStats.received.momento), 0);
});

test("Buy at the shown price fills", async () => {
  await page.getByTestId("buy-USD_JPY").click();
  const row = page.locator("#orders tr").first();
  await row.locator("td[data-testid=order-status]", { hasText: "FILLED" }).waitFor({ timeout: 5000 });
  assert.equal(await row.locator("td").nth(1).textContent(), "USD_JPY");
  assert.equal(await row.locator("td").nth(2).textContent(), "BUY");
  assert.match(await row.locator("td").nth(6).textContent(), /^\d+\.\d{3}$/, "a fill price is shown");
  // The order event over the WebSocket can show FILLED before the REST answer,
  // which carries the round trip, arrives.
  await row.locator("td").nth(8).filter({ hasText: /ms$/ }).waitFor({ timeout: 5000 }).catch(() => {});
  assert.match(await row.locator("td").nth(8).textContent(), /ms$/, "the round trip is shown");
});

test("what the user types is shown as text, never run as HTML", async () => {
  await page.getByTestId("price-override").fill('<img src=x onerror="window.__xss = 1">');
  await page.getByTestId("buy-USD_JPY").click();
  const row = page.locator("#orders tr").first();
  await row.locator("td[data-testid=order-status]", { hasText: "ERROR" }).waitFor({ timeout: 5000 });
  assert.equal(await row.locator("td").nth(4).textContent(), '<img src=x onerror="window.__xss = 1">');
  assert.match(await row.getByTestId("order-reason").textContent(), /price/);
  assert.equal(await page.locator("#orders img").count(), 0, "no element was injected");
  assert.equal(await page.evaluate(() => window.__xss), undefined, "no script ran");
  await page.getByTestId("price-override").fill("");
});

test("a far-off price is rejected with its reason", async () => {
  await page.getByTestId("price-override").fill("100.000");
  await page.getByTestId("buy-USD_JPY").click();
  const row = page.locator("#orders tr").first();
  await row.locator("td[data-testid=order-status]", { hasText: "REJECTED" }).waitFor({ timeout: 5000 });
  const reason = await row.getByTestId("order-reason").textContent();
  assert.match(reason, /^PRICE_MOVED: ask \d+\.\d{3} is \d+\.\d{3} from 100\.000, tolerance/);
  await page.getByTestId("price-override").fill("");
  await page.getByTestId("sell-EUR_USD").click();
  await page.locator("#orders tr").first().locator("td[data-testid=order-status]", { hasText: "FILLED" }).waitFor({ timeout: 5000 });
  // README's picture is refreshed on request only, so a test run leaves
  // the tree clean: FXCAST_UPDATE_SCREENSHOT=1 npm test --prefix tests/browser
  const shot = process.env.FXCAST_UPDATE_SCREENSHOT
    ? join(root, "docs", "ui.png")
    : join(mkdtempSync(join(tmpdir(), "fxcast-ui-")), "ui.png");
  await page.screenshot({ path: shot });
});
