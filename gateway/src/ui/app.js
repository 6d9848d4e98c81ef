// fxcast browser UI: a live rate board, an order ticket and a blotter.
// Plain JavaScript, no build step. Decimals stay strings except for display
// arithmetic (spread), which uses integer ticks so nothing is rounded wrongly.
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
};

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
  $("identity").textContent = body.subject;
  // Refresh a minute before expiry (or at half-life for short tokens).
  const life = state.tokenExpires - Date.now();
  setTimeout(refreshToken, Math.max(1000, Math.min(life - 60000, life / 2)));
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

function onRate(rate) {
  const row = state.rows.get(rate.symbol);
  if (!row) return;
  const scale = row.info.price_scale;
  const bid = toTicks(rate.bid, scale), ask = toTicks(rate.ask, scale);
  const prev = row.last;
  if (prev && rate.sequence <= prev.sequence) return;
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
      case "rate": onRate(message); break;
      case "gap": onGap(message); break;
      case "order": upsertOrder(message, null); break;
      case "error": console.warn("server:", message.code, message.message); break;
    }
  };
  ws.onclose = async (event) => {
    if (state.ws !== ws) return;
    state.ws = null;
    setStatus("down", `reconnecting (${event.reason || event.code})`);
    const delay = state.backoff;
    state.backoff = Math.min(state.backoff * 2, 10000);
    setTimeout(async () => {
      if (event.code === 1008 || Date.now() > state.tokenExpires - 5000) {
        try { await fetchToken(); } catch (e) { setStatus("down", e.message); }
      }
      connect();
    }, delay);
  };
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
  connect();
  setInterval(tickAges, 250);
}

start();
