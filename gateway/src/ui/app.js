// fxcast browser UI: a live rate board, an order ticket and a blotter.
// Plain JavaScript, no build step. Decimals stay strings except for display
// arithmetic (spread), which uses integer ticks so nothing is rounded wrongly.
//
// Rates come one of two ways, shown in #path:
// - "momento": when the token comes with a `momento` grant (the server runs
//   --transport momento or --momento-bridge), straight from the Momento
//   topics rates.<SYMBOL> with Momento's web SDK (loaded on demand from
//   /app.js?module=momento-sdk), each message one protobuf fxcast.v1.Rate
//   (or, with --momento-board, the one topic board.rates carrying records
//   of several symbols' latest Rate);
// - "gateway": the gateway's WebSocket /v1/stream, the default, and the
//   fallback while Momento is unreachable (Momento is retried with backoff,
//   and the WebSocket closed once Momento delivers again).
// Orders always go over REST.
"use strict";

const state = {
  token: null,
  tokenExpires: 0,
  subject: "",
  symbols: [],          // [{symbol, price_scale}]
  rows: new Map(),      // symbol -> {el, last, history[], gapUntil}
  ws: null,
  backoff: 500,
  orders: new Map(),    // order_id or client id -> row element
  seq: 0,
  tokenTimer: 0,
  wsTimer: 0,
  momentoAccess: null,  // the `momento` grant of the latest token
  momento: {
    session: null,      // the subscriptions rates are read from (see openMomento)
    backoff: 0,
    retryTimer: 0,
    refreshTimer: 0,
  },
  refetching: new Map(), // symbol -> time of the last gap refetch
};

// What the page did, for people debugging it and for the browser tests.
const stats = {
  path: "",
  pathLog: [],          // [{path, text, at}]
  received: { momento: 0, gateway: 0 },
  gaps: {},             // symbol -> sequence jumps and discontinuities seen
  gapLog: [],           // [{symbol, after, next, reason}]
  lastSequence: {},     // symbol -> last sequence shown
  momentoSessions: 0,   // subscription sets opened
  momentoRotations: 0,  // of those, replacing one before its token expired
  momentoRecoveries: 0, // of those, replacing the gateway WebSocket
  bridgedRenewals: 0,   // renewals carried by the gateway WebSocket (HTTP/1.1 endpoints)
  fallbacks: [],        // [{reason, at}]
  decodeErrors: 0,
  refetches: 0,
  conflated: 0,         // sequences skipped by design on conflated Momento topics
};
window.fxcastStats = stats;

const MOMENTO_SILENCE_MS = 5000;      // no item nor heartbeat for this long: Momento is lost
const MOMENTO_SUBSCRIBE_TIMEOUT_MS = 10000;
const MOMENTO_RETRY_MIN_MS = 1000, MOMENTO_RETRY_MAX_MS = 30000;
const HANDOVER_MAX_MS = 5000;         // the old source is closed by then at the latest
const REFETCH_EVERY_MS = 2000;        // per symbol, so paced (conflated) topics cost little
// Browsers speak HTTP/1.1 to a plaintext endpoint (such as momento-local on
// http://) and hold at most 6 connections per origin, one per subscription:
// when old and new subscriptions do not fit at once, a token renewal is
// bridged by the gateway WebSocket instead (see useMomento).
const HTTP1_STREAMS_PER_ORIGIN = 6;
const BRIDGE_WAIT_MS = 5000;

const $ = (id) => document.getElementById(id);

function setStatus(kind, text) {
  const el = $("status");
  el.className = "status " + kind;
  el.querySelector(".text").textContent = text;
}

async function fetchToken() {
  const response = await fetch("/v1/tokens", { method: "POST" });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
  state.token = body.token;
  state.subject = body.subject;
  state.tokenExpires = Date.parse(body.expires_at);
  state.momentoAccess = body.momento || null;
  $("identity").textContent = body.subject;
  // Refresh at half-life: time enough to retry before it lapses.
  const life = state.tokenExpires - Date.now();
  clearTimeout(state.tokenTimer);
  state.tokenTimer = setTimeout(refreshToken, Math.max(1000, life / 2));
}

async function refreshToken() {
  try {
    await fetchToken();
    if (state.ws) state.ws.close(4000, "token refresh");  // reconnect resumes
  } catch (e) {
    setStatus("down", "token refresh failed: " + e.message);
    setTimeout(refreshToken, 5000);
  }
}

async function api(path, options = {}) {
  const headers = Object.assign({ authorization: "Bearer " + state.token }, options.headers || {});
  const response = await fetch(path, Object.assign({}, options, { headers }));
  const body = await response.json();
  if (!response.ok) throw Object.assign(new Error(body.error ? body.error.message : response.statusText), { body });
  return body;
}

// ---- rate board -----------------------------------------------------------

function toTicks(price, scale) {
  const [i, f = ""] = price.split(".");
  return BigInt(i + f.padEnd(scale, "0").slice(0, scale));
}

function formatTicks(ticks, scale) {
  const s = ticks.toString().padStart(scale + 1, "0");
  return scale ? s.slice(0, -scale) + "." + s.slice(-scale) : s;
}

function buildRow(info) {
  const tr = document.createElement("tr");
  tr.dataset.symbol = info.symbol;
  tr.innerHTML = `
    <td class="sym">${info.symbol}</td>
    <td class="num px bid" data-testid="bid-${info.symbol}">—</td>
    <td><button class="sell" data-testid="sell-${info.symbol}" disabled>Sell</button> <button class="buy" data-testid="buy-${info.symbol}" disabled>Buy</button></td>
    <td class="num px ask" data-testid="ask-${info.symbol}">—</td>
    <td class="num spread">—</td>
    <td><svg class="spark" width="120" height="22"><polyline points=""/></svg></td>
    <td class="num age">—</td>
    <td class="num seq">—</td>
    <td class="flag"></td>`;
  const row = { el: tr, info, last: null, history: [], gapUntil: 0, gapText: "" };
  tr.querySelector("button.buy").onclick = () => placeOrder(row, "buy");
  tr.querySelector("button.sell").onclick = () => placeOrder(row, "sell");
  return row;
}

function renderBoard() {
  const body = $("rates");
  body.textContent = "";
  state.rows.clear();
  for (const info of state.symbols) {
    const row = buildRow(info);
    state.rows.set(info.symbol, row);
    body.appendChild(row.el);
  }
}

function flash(cell, previous, next) {
  if (previous === null || previous === next) return;
  cell.classList.remove("flash-up", "flash-down");
  void cell.offsetWidth;
  cell.classList.add(next > previous ? "flash-up" : "flash-down");
  clearTimeout(cell._t);
  cell._t = setTimeout(() => cell.classList.remove("flash-up", "flash-down"), 350);
}

// `mayJump`: the latest rate fetched after a gap, or one off a conflated
// Momento topic (max_messages_per_second), whose sequence jumps by design.
function onRate(rate, mayJump = false) {
  const row = state.rows.get(rate.symbol);
  if (!row) return;
  const scale = row.info.price_scale;
  const bid = toTicks(rate.bid, scale), ask = toTicks(rate.ask, scale);
  const prev = row.last;
  // Duplicates are normal while two sources overlap (a handover).
  if (prev && rate.sequence <= prev.sequence) return;
  if (prev && rate.sequence > prev.sequence + 1) {
    if (mayJump) stats.conflated += rate.sequence - prev.sequence - 1;
    else noteGap(rate.symbol, prev.sequence, rate.sequence, "sequence jump");
  }
  stats.lastSequence[rate.symbol] = rate.sequence;
  const el = row.el;
  flash(el.querySelector(".bid"), prev ? toTicks(prev.bid, scale) : null, bid);
  flash(el.querySelector(".ask"), prev ? toTicks(prev.ask, scale) : null, ask);
  el.querySelector(".bid").textContent = rate.bid;
  el.querySelector(".ask").textContent = rate.ask;
  el.querySelector(".spread").textContent = formatTicks(ask - bid, scale);
  el.querySelector(".seq").textContent = rate.sequence;
  el.querySelectorAll("button").forEach((b) => (b.disabled = false));
  row.last = Object.assign({}, rate, { receivedAt: Date.now() });
  row.history.push(Number(bid + ask) / 2);
  if (row.history.length > 60) row.history.shift();
  drawSpark(row);
}

function onGap(gap) {
  const row = state.rows.get(gap.symbol);
  if (!row) return;
  row.gapUntil = Date.now() + 10000;
  row.gapText = `missed ${gap.first_missing}..${gap.last_missing} (${gap.reason})`;
}

// A gap the page found itself (a sequence jump, a Momento discontinuity):
// shown on the row, counted, and the symbol's latest rate fetched over REST.
function noteGap(symbol, after, next, reason) {
  stats.gaps[symbol] = (stats.gaps[symbol] || 0) + 1;
  stats.gapLog.push({ symbol, after, next, reason });
  if (stats.gapLog.length > 200) stats.gapLog.shift();
  const row = state.rows.get(symbol);
  if (row) {
    row.gapUntil = Date.now() + 10000;
    row.gapText = next == null ? `gap after ${after} (${reason})` : `missed ${after + 1}..${next - 1} (${reason})`;
  }
  refetchLatest(symbol);
}

async function refetchLatest(symbol) {
  const last = state.refetching.get(symbol);
  if (last && Date.now() - last < REFETCH_EVERY_MS) return;
  state.refetching.set(symbol, Date.now());
  stats.refetches++;
  try {
    onRate(await api(`/v1/rates/${encodeURIComponent(symbol)}`), true);
  } catch (e) {
    console.warn("refetch", symbol, e.message);
  }
}

function drawSpark(row) {
  const h = row.history;
  if (h.length < 2) return;
  const min = Math.min(...h), max = Math.max(...h), span = max - min || 1;
  const points = h.map((v, i) => `${(i * 119) / (h.length - 1)},${20 - ((v - min) / span) * 18}`).join(" ");
  row.el.querySelector("polyline").setAttribute("points", points);
}

function tickAges() {
  const now = Date.now();
  for (const row of state.rows.values()) {
    const flag = row.el.querySelector(".flag");
    if (!row.last) continue;
    const age = (now - Date.parse(row.last.publish_time || new Date(row.last.receivedAt).toISOString())) / 1000;
    row.el.querySelector(".age").textContent = age < 60 ? age.toFixed(1) + "s" : Math.round(age / 60) + "m";
    const stale = row.last.stale || age > 5;
    row.el.classList.toggle("stale", stale);
    const warnings = [];
    if (stale) warnings.push("stale feed");
    if (row.gapUntil > now) warnings.push(row.gapText);
    flag.textContent = warnings.length ? "⚠ " + warnings.join("; ") : "";
    flag.className = "flag warn";
  }
}

// ---- streaming ------------------------------------------------------------

function connect() {
  if (state.ws) return;
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${proto}//${location.host}/v1/stream?token=${encodeURIComponent(state.token)}`);
  state.ws = ws;
  ws.onopen = () => {
    state.backoff = 500;
    setStatus("live", "live");
    const resume = {};
    for (const [symbol, row] of state.rows) if (row.last) resume[symbol] = row.last.sequence;
    ws.send(JSON.stringify({ type: "subscribe", symbols: state.symbols.map((s) => s.symbol), resume_after: resume, orders: true }));
  };
  ws.onmessage = (event) => {
    const message = JSON.parse(event.data);
    switch (message.type) {
      case "rate": stats.received.gateway++; onRate(message); wsDelivered(); break;
      case "gap": onGap(message); break;
      case "order": upsertOrder(message, null); break;
      case "error": console.warn("server:", message.code, message.message); break;
    }
  };
  ws.onclose = async (event) => {
    if (state.ws !== ws) return;
    state.ws = null;
    if (state.momento.session) return;  // Momento took over meanwhile
    setStatus("down", `reconnecting (${event.reason || event.code})`);
    const delay = state.backoff;
    state.backoff = Math.min(state.backoff * 2, 10000);
    clearTimeout(state.wsTimer);
    state.wsTimer = setTimeout(async () => {
      state.wsTimer = 0;
      if (event.code === 1008 || Date.now() > state.tokenExpires - 5000) {
        try { await fetchToken(); } catch (e) { setStatus("down", e.message); }
      }
      if (!state.momento.session) connect();
    }, delay);
  };
}

// Resolves once the WebSocket delivers (it starts with each symbol's
// latest rate, or what it missed), or after `timeout` ms whatever happened.
const wsWaiters = [];
function wsDelivered() {
  while (wsWaiters.length) wsWaiters.shift()();
}
function openBridge(timeout) {
  connect();
  return new Promise((resolve) => {
    wsWaiters.push(resolve);
    setTimeout(resolve, timeout);
  });
}

function closeWs(reason) {
  const ws = state.ws;
  clearTimeout(state.wsTimer);
  state.wsTimer = 0;
  if (!ws) return;
  state.ws = null;  // before close(): onclose then knows it was meant
  ws.close(1000, reason);
}

function setPath(path, text) {
  const el = $("path");
  el.dataset.path = path;
  el.textContent = text;
  el.title = text;
  stats.path = path;
  stats.pathLog.push({ path, text, at: Date.now() });
  if (stats.pathLog.length > 100) stats.pathLog.shift();
}

// ---- Momento ---------------------------------------------------------------

// fxcast.v1.Rate (proto/fxcast/v1/rates.proto), protobuf wire format:
// symbol=1, bid=2, ask=3 (string), sequence=4 (uint64), source_time=5,
// publish_time=6 (google.protobuf.Timestamp), rate_id=7, source=8 (string),
// stale=9 (bool). Unknown fields are skipped by wire type.
const utf8 = new TextDecoder();

function readVarint(bytes, pos) {
  let value = 0n;
  for (let i = 0; i < 10; i++) {
    if (pos >= bytes.length) throw new Error("truncated varint");
    const byte = bytes[pos++];
    value |= BigInt(byte & 0x7f) << BigInt(7 * i);
    if (byte < 0x80) return [BigInt.asUintN(64, value), pos];
  }
  throw new Error("varint longer than 10 bytes");
}

// Calls onField(number, wireType, value) for each field: a BigInt for
// varints, a Uint8Array for the others.
function readFields(bytes, onField) {
  let pos = 0;
  while (pos < bytes.length) {
    let key, value;
    [key, pos] = readVarint(bytes, pos);
    const number = Number(key >> 3n), wire = Number(key & 7n);
    if (number === 0) throw new Error("field number 0");
    let size;
    switch (wire) {
      case 0: [value, pos] = readVarint(bytes, pos); onField(number, wire, value); continue;
      case 1: size = 8; break;
      case 2: [value, pos] = readVarint(bytes, pos); size = value; break;
      case 5: size = 4; break;
      default: throw new Error(`unsupported wire type ${wire}`);  // 3, 4: groups, not in proto3
    }
    if (BigInt(size) > BigInt(bytes.length - pos)) throw new Error("truncated field");
    const end = pos + Number(size);
    onField(number, wire, bytes.subarray(pos, end));
    pos = end;
  }
}

function decodeTimestamp(bytes) {
  let seconds = 0n, nanos = 0n;
  readFields(bytes, (number, wire, value) => {
    if (wire !== 0) return;
    if (number === 1) seconds = BigInt.asIntN(64, value);
    else if (number === 2) nanos = BigInt.asIntN(32, value);
  });
  return new Date(Number(seconds) * 1000 + Math.floor(Number(nanos) / 1e6)).toISOString();
}

function decodeRate(bytes) {
  const rate = { symbol: "", bid: "", ask: "", sequence: 0, rate_id: "", source: "", stale: false, source_time: null, publish_time: null };
  const strings = { 1: "symbol", 2: "bid", 3: "ask", 7: "rate_id", 8: "source" };
  readFields(bytes, (number, wire, value) => {
    if (wire === 2 && strings[number]) rate[strings[number]] = utf8.decode(value);
    else if (wire === 2 && number === 5) rate.source_time = decodeTimestamp(value);
    else if (wire === 2 && number === 6) rate.publish_time = decodeTimestamp(value);
    else if (wire === 0 && number === 4) {
      if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error(`sequence ${value} is beyond 2^53`);
      rate.sequence = Number(value);
    } else if (wire === 0 && number === 9) rate.stale = value !== 0n;
  });
  if (!rate.symbol) throw new Error("rate without a symbol");
  return rate;
}
window.fxcastDecodeRate = decodeRate;

let momentoSdk = null;
function loadMomentoSdk() {
  momentoSdk ??= import("/app.js?module=momento-sdk").catch((e) => { momentoSdk = null; throw e; });
  return momentoSdk;
}

// Hosted Momento: the token names its endpoints. Anything else (such as
// `fxcast momento-local` at http://127.0.0.1:PORT) takes the grant's endpoint.
function momentoCredentials(sdk, access) {
  const url = new URL(access.endpoint);
  if (url.hostname.endsWith(".momentohq.com")) return sdk.CredentialProvider.fromString({ authToken: access.token });
  const endpoint = url.origin;
  return sdk.CredentialProvider.fromString({
    authToken: access.token,
    endpointOverrides: { cacheEndpoint: endpoint, controlEndpoint: endpoint, tokenEndpoint: endpoint, secureConnection: url.protocol === "https:" },
  });
}

const topicSymbol = (topic) => topic.replace(/^rates\./, "");

// With --momento-board, a token that sees every symbol gets one topic,
// board.rates, instead of rates.<SYMBOL>: each message is byte 2, then
// records of a u16 (big-endian) topic length, the topic (rates.<SYMBOL>), a
// u16 payload length and the payload, one fxcast.v1.Rate.
const BOARD_VERSION = 2;
const isBoard = (topic) => topic.startsWith("board.");

function boardRecords(bytes) {
  if (bytes[0] !== BOARD_VERSION) throw new Error(`board message of version ${bytes[0]}`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const records = [];
  let at = 1;
  while (at < bytes.length) {
    if (at + 2 > bytes.length) throw new Error("truncated board record");
    const topicEnd = at + 2 + view.getUint16(at);
    if (topicEnd + 2 > bytes.length) throw new Error("truncated board record");
    const end = topicEnd + 2 + view.getUint16(topicEnd);
    if (end > bytes.length) throw new Error("truncated board record");
    records.push({ topic: utf8.decode(bytes.subarray(at + 2, topicEnd)), payload: bytes.subarray(topicEnd + 2, end) });
    at = end;
  }
  return records;
}
window.fxcastBoardRecords = boardRecords;

// The rates of one Momento item of `topic`.
function momentoRates(topic, bytes) {
  if (!isBoard(topic)) return [decodeRate(bytes)];
  return boardRecords(bytes).map((record) => {
    const rate = decodeRate(record.payload);
    if (record.topic !== `rates.${rate.symbol}`) throw new Error(`board record ${record.topic} carries ${rate.symbol}`);
    return rate;
  });
}

// The symbols a session's topics carry: the board carries every symbol.
const sessionSymbols = (topics) => topics.some(isBoard) ? state.symbols.map((s) => s.symbol) : topics.map(topicSymbol);

// One subscription per topic with one Momento token, all open or none.
// Items of every session, old or new, go to onRate, which drops duplicates.
async function openMomento(access) {
  const sdk = await loadMomentoSdk();
  const session = {
    access, sdk, subscriptions: [], seen: new Set(), symbols: sessionSymbols(access.topics),
    lastActivity: Date.now(), closed: false, closedBecause: "", onCovered: null, coverTimer: 0,
    client: new sdk.TopicClient({ configuration: sdk.TopicConfigurations.Browser.latest(), credentialProvider: momentoCredentials(sdk, access) }),
  };
  try {
    await Promise.all(access.topics.map((topic) => subscribeTopic(session, topic)));
  } catch (e) {
    closeMomento(session, e.message);
    throw e;
  }
  if (session.closed) throw new Error(session.closedBecause);
  stats.momentoSessions++;
  return session;
}

function subscribeTopic(session, topic) {
  const symbols = isBoard(topic) ? session.symbols : [topicSymbol(topic)];
  const alive = () => { session.lastActivity = Date.now(); };
  const subscribing = session.client.subscribe(session.access.cache_name, topic, {
    onItem: (item) => onMomentoItem(session, topic, item),
    onHeartbeat: alive,
    onDiscontinuity: (d) => {
      alive();
      if (session.closed) return;
      // A board message lost may have carried any symbol.
      for (const symbol of symbols) noteGap(symbol, state.rows.get(symbol)?.last?.sequence ?? 0, null, `momento discontinuity ${d.lastSequenceNumber()}..${d.newSequenceNumber()}`);
    },
    onError: (error) => momentoFailed(session, `${topic}: ${error.message()}`),
    onConnectionLost: () => momentoFailed(session, `${topic}: connection lost`),
  });
  return new Promise((resolve, reject) => {
    let timedOut = false;
    const timer = setTimeout(() => { timedOut = true; reject(new Error(`subscribing to ${topic} timed out`)); }, MOMENTO_SUBSCRIBE_TIMEOUT_MS);
    subscribing.then((response) => {
      clearTimeout(timer);
      const ok = response instanceof session.sdk.TopicSubscribe.Subscription;
      if (ok && (timedOut || session.closed)) response.unsubscribe();
      else if (ok) session.subscriptions.push(response);
      if (timedOut) return;
      if (ok) resolve();
      else reject(new Error(`subscribing to ${topic}: ${response.message ? response.message() : response}`));
    }, (e) => { clearTimeout(timer); reject(e); });
  });
}

function onMomentoItem(session, topic, item) {
  if (session.closed) return;
  session.lastActivity = Date.now();
  let rates;
  try {
    rates = momentoRates(topic, item.valueUint8Array());
  } catch (e) {
    stats.decodeErrors++;
    console.warn(`undecodable Momento item on ${topic}:`, e.message);
    return;
  }
  const conflated = session.access.max_messages_per_second > 0;
  for (const rate of rates) {
    stats.received.momento++;
    session.seen.add(rate.symbol);
    onRate(rate, conflated);
  }
  checkCovered(session);
}

function closeMomento(session, because) {
  if (session.closed) return;
  session.closed = true;
  session.closedBecause = because;
  clearTimeout(session.coverTimer);
  for (const subscription of session.subscriptions) subscription.unsubscribe();
}

function canOverlap(access) {
  return new URL(access.endpoint).protocol === "https:" || 2 * access.topics.length <= HTTP1_STREAMS_PER_ORIGIN;
}

// Subscribes with `access` and makes it the rate source. The source it
// replaces (an older session, or the WebSocket) stays open until the new
// one has delivered every symbol, so a handover loses nothing. Where both
// sessions cannot be open at once (canOverlap), the gateway WebSocket
// resumes from the last sequences first and carries the rates meanwhile.
async function useMomento(access) {
  const previous = state.momento.session;
  let bridged = false;
  if (previous && !canOverlap(access)) {
    setPath("momento", `Momento direct (${access.cache_name}), renewing its token through the gateway`);
    await openBridge(BRIDGE_WAIT_MS);
    if (state.momento.session !== previous) return;  // Momento failed meanwhile
    closeMomento(previous, "replaced");
    bridged = true;
    stats.bridgedRenewals++;
  }
  let session;
  try {
    session = await openMomento(access);
  } catch (e) {
    if (bridged && state.momento.session === previous) {
      state.momento.session = null;
      stats.fallbacks.push({ reason: e.message, at: Date.now() });
      fallBack(e.message);
    }
    throw e;
  }
  if (state.momento.session !== previous) {  // another switch won meanwhile
    closeMomento(session, "superseded");
    return;
  }
  state.momento.session = session;
  state.momentoAccess = access;
  state.momento.backoff = 0;
  clearTimeout(state.momento.retryTimer);
  scheduleMomentoRefresh(session);
  if (previous) stats.momentoRotations++;
  else if (state.ws || state.wsTimer) stats.momentoRecoveries++;
  setPath("momento", `Momento direct (${access.cache_name})`);
  setStatus("live", "live");
  session.onCovered = () => {
    if (previous) closeMomento(previous, "replaced");
    if (state.momento.session === session) closeWs("momento");
  };
  session.coverTimer = setTimeout(() => runCovered(session), HANDOVER_MAX_MS);
  checkCovered(session);
}

function checkCovered(session) {
  if (session.onCovered && session.symbols.every((s) => session.seen.has(s))) runCovered(session);
}

function runCovered(session) {
  const done = session.onCovered;
  session.onCovered = null;
  clearTimeout(session.coverTimer);
  if (done && !session.closed) done();
}

function momentoFailed(session, reason) {
  if (session.closed) return;
  closeMomento(session, reason);
  if (state.momento.session !== session) return;
  state.momento.session = null;
  clearTimeout(state.momento.refreshTimer);
  stats.fallbacks.push({ reason, at: Date.now() });
  console.warn("Momento lost, using the gateway:", reason);
  fallBack(reason);
}

function fallBack(reason) {
  setStatus("down", "switching to the gateway");
  connect();
  scheduleMomentoRetry(reason);
}

function scheduleMomentoRetry(reason) {
  const m = state.momento;
  m.backoff = Math.min(Math.max(m.backoff * 2, MOMENTO_RETRY_MIN_MS), MOMENTO_RETRY_MAX_MS);
  const delay = m.backoff / 2 + Math.random() * m.backoff / 2;
  setPath("gateway", `gateway WebSocket: Momento unreachable (${reason}), retrying in ${Math.ceil(delay / 1000)}s`);
  clearTimeout(m.retryTimer);
  m.retryTimer = setTimeout(retryMomento, delay);
}

async function retryMomento() {
  if (state.momento.session) return;
  try {
    await useMomento(await api("/v1/tokens/momento", { method: "POST" }));
  } catch (e) {
    if (!state.momento.session) scheduleMomentoRetry(e.message);
  }
}

// Renew the Momento token before it expires: at 80% of its life, or 30 s
// before the end if that is earlier (half-life for tokens under a minute).
function scheduleMomentoRefresh(session) {
  const life = Date.parse(session.access.expires_at) - Date.now();
  const margin = Math.max(life * 0.2, Math.min(30000, life / 2));
  clearTimeout(state.momento.refreshTimer);
  state.momento.refreshTimer = setTimeout(() => refreshMomento(session), Math.max(1000, life - margin));
}

async function refreshMomento(session) {
  if (state.momento.session !== session) return;
  try {
    let access = null;
    // A Momento token ends with the fxcast token at the latest: renew that
    // first, its answer carries a fresh Momento token.
    if (state.tokenExpires <= Date.parse(session.access.expires_at) + 1000) {
      await refreshToken();
      access = state.momentoAccess;
    }
    if (!access || access === session.access) access = await api("/v1/tokens/momento", { method: "POST" });
    if (state.momento.session === session) await useMomento(access);
  } catch (e) {
    console.warn("Momento token refresh failed:", e.message);
    if (state.momento.session === session) state.momento.refreshTimer = setTimeout(() => refreshMomento(session), 2000);
  }
}

function watchMomento() {
  const session = state.momento.session;
  if (session && Date.now() - session.lastActivity > MOMENTO_SILENCE_MS) {
    momentoFailed(session, `nothing from Momento for ${MOMENTO_SILENCE_MS / 1000}s`);
  }
}

// ---- orders ---------------------------------------------------------------

function quantityFor(info) {
  const amount = Number($("amount").value);
  // Crypto is quoted in whole units of a large price: trade fractions of a coin.
  return info.price_scale <= 2 ? String(amount / 100000) : String(amount);
}

// Cells of an order row. Built as text nodes, never as HTML: prices the user
// typed and messages quoting them come back in orders and errors.
function orderCells(order, rtt) {
  const time = (order.created_at || new Date().toISOString()).slice(11, 23);
  const status = (order.status || "pending").toUpperCase();
  const reason = order.reject_reason ? `${order.reject_reason.toUpperCase()}: ${order.message}` : order.message || "";
  const cell = (text, className, testid) => {
    const td = document.createElement("td");
    td.textContent = text == null ? "" : String(text);
    if (className) td.className = className;
    if (testid) td.dataset.testid = testid;
    return td;
  };
  const reasonCell = cell(reason, "reason", "order-reason");
  reasonCell.title = reason;
  return [
    cell(time), cell(order.symbol), cell(String(order.side || "").toUpperCase()),
    cell(order.quantity, "num"), cell(order.price, "num"),
    cell(status, status, "order-status"), cell(order.fill_price || "", "num"),
    reasonCell, cell(rtt == null ? "" : rtt.toFixed(1) + " ms", "num"),
  ];
}

function upsertOrder(order, rtt) {
  let tr = state.orders.get(order.client_order_id);
  if (!tr) {
    tr = document.createElement("tr");
    $("orders").prepend(tr);
    state.orders.set(order.client_order_id, tr);
  } else if (rtt == null && tr.dataset.rtt) {
    rtt = Number(tr.dataset.rtt);
  }
  if (rtt != null) tr.dataset.rtt = rtt;
  tr.replaceChildren(...orderCells(order, rtt));
}

async function placeOrder(row, side) {
  if (!row.last) return;
  const override = $("price-override").value.trim();
  const price = override || (side === "buy" ? row.last.ask : row.last.bid);
  const order = {
    client_order_id: `ui-${state.subject.slice(-6)}-${Date.now().toString(36)}-${++state.seq}`,
    symbol: row.info.symbol, side, quantity: quantityFor(row.info), price,
  };
  if (!override) order.rate_id = row.last.rate_id;
  upsertOrder(Object.assign({ status: "pending" }, order), null);
  const started = performance.now();
  try {
    const result = await api("/v1/orders", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(order) });
    upsertOrder(result, performance.now() - started);
  } catch (e) {
    upsertOrder(Object.assign({}, order, { status: "error", message: e.message }), performance.now() - started);
  }
}

async function loadOrders() {
  try {
    const list = await api("/v1/orders?page_size=50");
    for (const order of list.orders.reverse()) upsertOrder(order, null);
  } catch (e) { /* a token without orders:read just has no blotter history */ }
}

// ---- start ----------------------------------------------------------------

async function start() {
  for (;;) {
    try {
      await fetchToken();
      const symbols = await api("/v1/symbols");
      state.symbols = symbols.symbols;
      break;
    } catch (e) {
      setStatus("down", e.message);
      await new Promise((r) => setTimeout(r, 2000));
    }
  }
  renderBoard();
  loadOrders();
  setInterval(tickAges, 250);
  setInterval(watchMomento, 1000);
  if (state.momentoAccess) {
    setPath("connecting", "connecting to Momento");
    try {
      await useMomento(state.momentoAccess);
    } catch (e) {
      fallBack(e.message);
    }
  } else {
    setPath("gateway", "gateway WebSocket");
    connect();
  }
}

start();
