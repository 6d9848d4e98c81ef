// The fxcast UI in Momento mode, in a real headless Chromium: `fxcast
// momento-local` and `fxcast serve` on it (--transport momento, then
// --momento-bridge). The page reads the rates straight from the Momento
// topics with Momento's web SDK and opens no WebSocket to the gateway; it
// renews short-lived tokens without losing a sequence; when momento-local
// dies it falls back to the gateway WebSocket, and when momento-local is
// back on the same port it returns to Momento and closes the WebSocket.
import { describe, test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const binary = process.env.FXCAST_BIN || join(process.env.CARGO_TARGET_DIR || join(root, "target"), "debug", "fxcast");
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";

// Token lifetime the test forces on the page: short enough that the test
// sees the fxcast and the Momento tokens renewed twice.
const TOKEN_TTL_SECONDS = 20;

/// Starts `fxcast ...args` and resolves with the first match of `pattern`
/// in its log (the addresses it bound).
function start(args, pattern, env = {}) {
  const child = spawn(binary, args, { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, RUST_LOG: "info", ...env } });
  child.log = [];
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stderr });
    const timer = setTimeout(() => reject(new Error(`fxcast ${args[0]} did not log ${pattern}`)), 30000);
    lines.on("line", (line) => {
      child.log.push(line);
      if (child.log.length > 400) child.log.shift();
      const match = line.match(pattern);
      if (match) {
        clearTimeout(timer);
        resolve({ child, match });
      }
    });
    child.on("error", (error) => reject(new Error(`cannot start ${binary}: ${error.message}`)));
    child.on("exit", (code) => reject(new Error(`fxcast ${args[0]} exited with ${code}`)));
  });
}

async function startMomentoLocal(listen) {
  const { child, match } = await start(["momento-local", "--listen", listen, "--cache", "fxcast"], /momento-local listening addr=(\S+)/);
  return { child, addr: match[1] };
}

async function startServe(momentoArgs, apiKey, publishRate = "0") {
  const dataDir = mkdtempSync(join(tmpdir(), "fxcast-ui-momento-"));
  const { child, match } = await start([
    "serve", "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
    "--data-dir", dataDir, "--tick-interval", "100ms",
    // By default every rate on its topic (no pacing), so a lost sequence is
    // a real loss.
    "--momento-publish-rate", publishRate, ...momentoArgs,
  ], /fxcast listening .*http=(\S+)/, { FXCAST_API_KEY: apiKey, MOMENTO_API_KEY: "momento-local" });
  return { child, base: `http://${match[1]}` };
}

function stop(child, signal = "SIGTERM") {
  if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.removeAllListeners("exit");
    child.on("exit", () => resolve());
    child.kill(signal);
  });
}

async function launch() {
  return chromium.launch({
    executablePath: chromiumPath,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
}

/// A page on `base` that records its WebSockets, errors and token requests;
/// its POST /v1/tokens is issued with the API key and a short lifetime
/// (anonymous tokens live 15 minutes), as an operator's login page might.
async function openPage(browser, base, apiKey, symbols = "*") {
  const page = await browser.newPage({ viewport: { width: 1280, height: 620 } });
  // subscribing: Momento Subscribe streams open now; maxSubscribing: the most at once.
  const seen = { websockets: [], errors: [], console: [], tokenRequests: 0, momentoTokenRequests: 0, sdkRequests: 0, subscribing: 0, maxSubscribing: 0 };
  page.on("pageerror", (error) => seen.errors.push(String(error)));
  page.on("console", (message) => {
    seen.console.push(`${message.type()}: ${message.text()}`);
    if (seen.console.length > 50) seen.console.shift();
  });
  page.on("websocket", (ws) => {
    const entry = { url: ws.url(), closed: false };
    ws.on("close", () => { entry.closed = true; });
    seen.websockets.push(entry);
  });
  page.on("request", (request) => {
    const url = new URL(request.url());
    if (url.pathname === "/v1/tokens/momento") seen.momentoTokenRequests++;
    if (url.pathname === "/app.js" && url.searchParams.get("module") === "momento-sdk") seen.sdkRequests++;
    if (url.pathname.endsWith(".Pubsub/Subscribe")) {
      seen.subscribing++;
      seen.maxSubscribing = Math.max(seen.maxSubscribing, seen.subscribing);
    }
  });
  const ended = (request) => { if (new URL(request.url()).pathname.endsWith(".Pubsub/Subscribe")) seen.subscribing--; };
  page.on("requestfinished", ended);
  page.on("requestfailed", ended);
  await page.route((url) => url.pathname === "/v1/tokens", async (route) => {
    seen.tokenRequests++;
    const response = await route.fetch({
      headers: { ...route.request().headers(), authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
      postData: JSON.stringify({ subject: "browser-test", scopes: [`rates:subscribe=${symbols}`, "orders:place", "orders:read"], ttl_seconds: TOKEN_TTL_SECONDS }),
    });
    await route.fulfill({ response });
  });
  await page.goto(base + "/");
  return { page, seen };
}

const stats = (page) => page.evaluate(() => JSON.parse(JSON.stringify(window.fxcastStats)));
const sequence = (page, symbol = "USD_JPY") =>
  page.evaluate((s) => Number(document.querySelector(`tr[data-symbol=${s}] td.seq`)?.textContent) || 0, symbol);
const totalGaps = (s) => Object.values(s.gaps).reduce((a, b) => a + b, 0);

async function waitForPath(page, path, timeout) {
  await page.waitForFunction((p) => document.getElementById("path")?.dataset.path === p, path, { timeout });
}

/// Resolves once USD_JPY's sequence on the board has moved `by` past where it is now.
async function ticks(page, by = 3, timeout = 5000) {
  const from = await sequence(page);
  await page.waitForFunction(([f, n]) => Number(document.querySelector("tr[data-symbol=USD_JPY] td.seq")?.textContent) >= f + n,
    [from, by], { timeout });
  return from;
}

const gatewaySockets = (seen, base) => seen.websockets.filter((ws) => ws.url.startsWith(base.replace(/^http/, "ws")));

/// The hooks of one describe block: momento-local on a free port and
/// `fxcast serve` on it with the flags `momentoArgs(endpoint)` returns for
/// momento-local's endpoint (and `publishRate`, see startServe), a browser
/// and a page on the gateway; after each test, the page raised no errors;
/// after the block, all of it stopped. Returns the block's state, which
/// `before` fills in (a test that restarts momento-local sets `momento`).
function momentoStack(momentoArgs, publishRate) {
  const stack = { apiKey: randomBytes(18).toString("base64url") };

  before(async () => {
    stack.momento = await startMomentoLocal("127.0.0.1:0");
    ({ child: stack.server, base: stack.base } = await startServe(momentoArgs(`http://${stack.momento.addr}`), stack.apiKey, publishRate));
    stack.browser = await launch();
    ({ page: stack.page, seen: stack.seen } = await openPage(stack.browser, stack.base, stack.apiKey));
  });

  afterEach(() => {
    assert.deepEqual(stack.seen.errors, [], "the page raised no errors");
  });

  after(async () => {
    await stack.browser?.close();
    await stop(stack.server);
    await stop(stack.momento?.child);
  });

  return stack;
}

describe("with --transport momento", () => {
  const stack = momentoStack((endpoint) => ["--transport", "momento", "--momento-endpoint", endpoint]);

  test("the board ticks from Momento and the page opens no WebSocket", async () => {
    const { page, seen } = stack;
    await waitForPath(page, "momento", 15000);
    await ticks(page, 5);
    assert.match(await page.locator("#path").textContent(), /Momento/);
    assert.equal(await page.locator("#status .text").textContent(), "live");
    assert.match(await page.getByTestId("bid-EUR_USD").textContent(), /^\d+\.\d{5}$/, "every symbol is on the board");
    const s = await stats(page);
    assert.ok(s.received.momento > 0, "rates came from Momento");
    assert.equal(s.received.gateway, 0, "no rate came from the gateway");
    assert.equal(seen.sdkRequests, 1, "the SDK was loaded once");
    assert.deepEqual(seen.websockets, [], "no WebSocket was opened");
  });

  test("orders stay on REST and fill at the Momento price", async () => {
    const { page, seen } = stack;
    await page.getByTestId("buy-USD_JPY").click();
    const row = page.locator("#orders tr").first();
    await row.locator("td[data-testid=order-status]", { hasText: "FILLED" }).waitFor({ timeout: 5000 });
    assert.deepEqual(seen.websockets, [], "still no WebSocket");
  });

  // momento-local here is plaintext: the browser speaks HTTP/1.1 to it, 6
  // connections at most, one per subscription. A page with 6 topics cannot
  // hold old and new subscriptions at once, so its renewals are bridged by
  // the gateway WebSocket; a page with 3 topics overlaps them.
  async function renewals(page, seen) {
    await ticks(page, 1);
    const first = await stats(page);
    const tokensBefore = seen.tokenRequests;
    // Two renewals of a 20 s token take 20 s and a bit.
    await page.waitForFunction((r) => window.fxcastStats.momentoRotations >= r + 2, first.momentoRotations, { timeout: 45000, polling: 250 })
      .catch(async (e) => { throw new Error(`${e.message}\n${JSON.stringify(await stats(page))}\n${seen.console.join("\n")}`); });
    await ticks(page, 5);
    const s = await stats(page);
    assert.ok(seen.tokenRequests > tokensBefore, "the fxcast token was renewed");
    assert.deepEqual(s.fallbacks, [], "Momento was never given up");
    assert.deepEqual(s.pathLog.map((p) => p.path).filter((p) => p !== "momento" && p !== "connecting"), [], "the page stayed on Momento");
    assert.deepEqual(s.gapLog, [], "no sequence was lost");
    assert.equal(totalGaps(s), 0);
    assert.ok(s.lastSequence.USD_JPY - first.lastSequence.USD_JPY > 150, "rates kept coming over the renewals");
    return { first, s };
  }

  test("short-lived tokens are renewed before they expire, with no sequence lost", async () => {
    const { page, seen, base, browser, apiKey } = stack;
    const narrow = await openPage(browser, base, apiKey, "USD_JPY,EUR_USD,GBP_USD");
    try {
      await waitForPath(narrow.page, "momento", 15000);
      const [wide, three] = await Promise.all([renewals(page, seen), renewals(narrow.page, narrow.seen)]);
      // 6 topics: each renewal went through the gateway WebSocket, closed after.
      assert.ok(wide.s.bridgedRenewals - wide.first.bridgedRenewals >= 2);
      const sockets = gatewaySockets(seen, base);
      assert.equal(sockets.length, wide.s.bridgedRenewals, "one WebSocket per bridged renewal");
      await waitFor(() => gatewaySockets(seen, base).every((ws) => ws.closed), 10000, "every bridge was closed");
      // 3 topics: old and new subscriptions overlapped, no WebSocket at all.
      assert.equal(three.s.bridgedRenewals, 0);
      assert.equal(narrow.seen.maxSubscribing, 6, "3 new subscriptions opened before the 3 old ones closed");
      assert.deepEqual(narrow.seen.websockets, [], "no WebSocket on the 3-topic page");
      assert.equal(await narrow.page.locator("#rates tr").count(), 3, "the narrow token sees 3 symbols");
      assert.deepEqual(narrow.seen.errors, []);
    } finally {
      await narrow.page.close();
    }
  });

  test("the page's decoder reads every field of fxcast.v1.Rate and skips unknown ones", async () => {
    const { page } = stack;
    // symbol, bid, ask, sequence 2^40+1, source_time/publish_time, rate_id,
    // source, stale, and unknown fields of each wire type between them.
    const bytes = [
      0x0a, 7, ...Buffer.from("USD_JPY"), 0x12, 7, ...Buffer.from("151.234"), 0x1a, 7, ...Buffer.from("151.240"),
      0xa8, 0x06, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, // field 101, varint 2^64-1
      0x20, 0x81, 0x80, 0x80, 0x80, 0x80, 0x20, // sequence = 2^40 + 1
      0x2a, 9, 0x08, 0x80, 0xe9, 0xf6, 0xb8, 0x06, 0x10, 0x80, 0x5a, // source_time 1730000000 s + 11520 ns
      0xb1, 0x06, 1, 2, 3, 4, 5, 6, 7, 8, // field 102, fixed64
      0x32, 6, 0x08, 0x81, 0xe9, 0xf6, 0xb8, 0x06, // publish_time 1730000001 s
      0xb5, 0x06, 1, 2, 3, 4, // field 102, fixed32
      0x3a, 3, ...Buffer.from("r-1"), 0x42, 3, ...Buffer.from("sim"), 0x48, 1,
      0xba, 0x06, 2, 0x08, 0x01, // field 103, a nested message
    ];
    const rate = await page.evaluate((b) => window.fxcastDecodeRate(new Uint8Array(b)), bytes);
    assert.deepEqual(rate, {
      symbol: "USD_JPY", bid: "151.234", ask: "151.240", sequence: 2 ** 40 + 1, rate_id: "r-1", source: "sim", stale: true,
      source_time: "2024-10-27T03:33:20.000Z", publish_time: "2024-10-27T03:33:21.000Z",
    });
    const refused = await page.evaluate(() => [
      [0x0a, 7, 0x55], // a string longer than the message
      [0x20, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], // an 11-byte varint
      [0x0b], // a group
      [0x0a, 1, 0x41, 0x20, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10], // sequence 2^53
    ].map((b) => { try { window.fxcastDecodeRate(new Uint8Array(b)); return "decoded"; } catch (e) { return e.message; } }));
    assert.deepEqual(refused, ["truncated field", "varint longer than 10 bytes", "unsupported wire type 3", "sequence 9007199254740992 is beyond 2^53"]);
  });

  test("when momento-local dies the page shows the gateway path, and returns to Momento when it is back", async () => {
    const { page, seen, base } = stack;
    const addr = stack.momento.addr;
    await stop(stack.momento.child, "SIGKILL");
    await waitForPath(page, "gateway", 15000);
    assert.match(await page.locator("#path").textContent(), /gateway/);
    const sockets = gatewaySockets(seen, base);
    assert.ok(sockets.some((ws) => !ws.closed), "the page opened the gateway WebSocket");
    assert.match(sockets[0].url, /\/v1\/stream\?token=/);
    // On --transport momento the server itself reads its rates from Momento:
    // with momento-local down there are none to show (the bridge test below
    // shows the board ticking over the gateway meanwhile).
    stack.momento = await startMomentoLocal(addr);
    await waitForPath(page, "momento", 45000);
    await ticks(page, 5, 15000);
    const s = await stats(page);
    assert.ok(s.fallbacks.length >= 1 && s.momentoRecoveries >= 1, JSON.stringify({ fallbacks: s.fallbacks, recoveries: s.momentoRecoveries }));
    await waitFor(() => gatewaySockets(seen, base).every((ws) => ws.closed), 10000, "the gateway WebSocket was closed");
  });
});

describe("with --momento-bridge", () => {
  const stack = momentoStack((endpoint) => ["--momento-bridge", "--momento-endpoint", endpoint]);

  test("the board ticks from Momento, then over the gateway while momento-local is down, then from Momento again", async () => {
    const { page, seen, base } = stack;
    await waitForPath(page, "momento", 15000);
    await ticks(page, 5);
    assert.deepEqual(seen.websockets, [], "no WebSocket while Momento works");

    const addr = stack.momento.addr;
    await stop(stack.momento.child, "SIGKILL");
    await waitForPath(page, "gateway", 15000);
    const before = (await stats(page)).received.gateway;
    await ticks(page, 10, 10000);
    assert.ok((await stats(page)).received.gateway > before, "the board ticks over the gateway WebSocket");
    assert.equal(gatewaySockets(seen, base).length >= 1, true);

    stack.momento = await startMomentoLocal(addr);
    await waitForPath(page, "momento", 45000);
    await waitFor(() => gatewaySockets(seen, base).every((ws) => ws.closed), 10000, "the gateway WebSocket was closed");
    const back = (await stats(page)).received.momento;
    await ticks(page, 10, 10000);
    const s = await stats(page);
    assert.ok(s.received.momento > back, "the board ticks from Momento again");
    assert.equal(s.path, "momento");
  });
});

describe("with --transport momento --momento-board", () => {
  // 5 board messages a second for 6 symbols ticking 10 times a second:
  // every message carries several symbols, and most sequences are
  // conflated away by design.
  const stack = momentoStack((endpoint) => ["--transport", "momento", "--momento-endpoint", endpoint, "--momento-board"], "5");

  test("every symbol ticks from the one board topic, conflated without a gap shown", async () => {
    const { page, seen } = stack;
    await waitForPath(page, "momento", 15000);
    await ticks(page, 1, 10000);
    await ticks(page, 20, 10000);
    const symbols = await page.locator("#rates tr").evaluateAll((rows) => rows.map((r) => r.dataset.symbol));
    assert.ok(symbols.length >= 2, `${symbols}`);
    for (const symbol of symbols) {
      await page.waitForFunction((s) => Number(document.querySelector(`tr[data-symbol=${s}] td.seq`)?.textContent) > 0, symbol, { timeout: 5000 });
    }
    const s = await stats(page);
    assert.equal(seen.maxSubscribing, 1, "one Momento subscription, the board");
    assert.ok(s.received.momento > 0 && s.received.gateway === 0, JSON.stringify(s.received));
    assert.ok(s.conflated > 0, `the board skipped sequences by design: ${JSON.stringify(s)}`);
    assert.deepEqual(s.gapLog, [], "conflation is not shown as loss");
    assert.deepEqual(seen.websockets, [], "no WebSocket was opened");
    assert.equal(await page.locator(".flag", { hasText: "missed" }).count(), 0, "no row warns of a gap");
  });

  test("the page's board decoder reads records and refuses broken ones", async () => {
    const { page } = stack;
    const record = (topic, payload) => {
      const t = Buffer.from(topic);
      return [t.length >> 8, t.length & 255, ...t, payload.length >> 8, payload.length & 255, ...payload];
    };
    const board = [2, ...record("rates.USD_JPY", [1, 2, 3]), ...record("rates.EUR_USD", [])];
    const read = await page.evaluate((b) => window.fxcastBoardRecords(new Uint8Array(b)).map((r) => [r.topic, [...r.payload]]), board);
    assert.deepEqual(read, [["rates.USD_JPY", [1, 2, 3]], ["rates.EUR_USD", []]]);
    const refused = await page.evaluate((b) => [
      [1, ...b.slice(1)], // a sharded envelope, not a board
      b.slice(0, b.length - 1).concat([0, 5]), // a payload longer than the message
      [2, 0], // a cut length
    ].map((bytes) => { try { window.fxcastBoardRecords(new Uint8Array(bytes)); return "read"; } catch (e) { return e.message; } }), board);
    assert.deepEqual(refused, ["board message of version 1", "truncated board record", "truncated board record"]);
  });

  test("a token that sees only some symbols is not given the board and stays on the gateway", async () => {
    const { base, browser, apiKey } = stack;
    const narrow = await openPage(browser, base, apiKey, "USD_JPY");
    try {
      await waitForPath(narrow.page, "gateway", 15000);
      await ticks(narrow.page, 3, 10000);
      assert.equal(narrow.seen.sdkRequests, 0, "the Momento SDK was not even loaded");
      assert.ok(gatewaySockets(narrow.seen, base).some((ws) => !ws.closed), "the gateway WebSocket carries the rates");
      assert.deepEqual(narrow.seen.errors, []);
    } finally {
      await narrow.page.close();
    }
  });
});

/// Polls a condition of the test's own (not the page's) state.
async function waitFor(condition, timeout, what) {
  const deadline = Date.now() + timeout;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
