// The fxcast UI over HTTPS in a real headless Chromium that trusts only a
// test CA made here (openssl), installed in the NSS database of a fresh
// HOME (certutil), as an operator's internal CA would be: the page, its API
// calls and its live stream all go over TLS, with no certificate errors
// ignored.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const binary = process.env.FXCAST_BIN || join(process.env.CARGO_TARGET_DIR || join(root, "target"), "debug", "fxcast");
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";

let server, base, browser, home;

/// A CA and a certificate for localhost it signs, in `dir`.
function makeCertificates(dir) {
  const openssl = (...args) => execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
  openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
    "-subj", "/CN=fxcast browser test CA", "-keyout", "ca-key.pem", "-out", "ca.pem",
    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign");
  openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
    "-subj", "/CN=localhost", "-keyout", "key.pem", "-out", "server.csr");
  writeFileSync(join(dir, "ext.cnf"),
    "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n");
  openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
    "-days", "2", "-extfile", "ext.cnf", "-out", "cert.pem");
}

/// A HOME whose NSS database trusts `ca` for TLS servers, as Chromium on
/// Linux reads it.
function trustingHome(ca) {
  const dir = mkdtempSync(join(tmpdir(), "fxcast-home-"));
  const nss = join(dir, ".pki", "nssdb");
  mkdirSync(nss, { recursive: true });
  execFileSync("certutil", ["-d", `sql:${nss}`, "-N", "--empty-password"]);
  execFileSync("certutil", ["-d", `sql:${nss}`, "-A", "-n", "fxcast-test-ca", "-t", "C,,", "-i", ca]);
  return dir;
}

function startServer(certs) {
  const dataDir = mkdtempSync(join(tmpdir(), "fxcast-ui-tls-"));
  const child = spawn(binary, [
    "serve", "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
    "--data-dir", dataDir, "--tick-interval", "100ms",
    "--tls-cert", join(certs, "cert.pem"), "--tls-key", join(certs, "key.pem"),
  ], { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, RUST_LOG: "info" } });
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stderr });
    const timer = setTimeout(() => reject(new Error("fxcast serve did not log its addresses")), 30000);
    lines.on("line", (line) => {
      const match = line.match(/fxcast listening .*http=\S+:(\d+)/);
      if (match) {
        clearTimeout(timer);
        resolve({ child, base: `https://localhost:${match[1]}` });
      }
    });
    child.on("error", (error) => reject(new Error(`cannot start ${binary}: ${error.message}`)));
    child.on("exit", (code) => reject(new Error(`fxcast serve exited with ${code}`)));
  });
}

before(async () => {
  const certs = mkdtempSync(join(tmpdir(), "fxcast-certs-"));
  makeCertificates(certs);
  home = trustingHome(join(certs, "ca.pem"));
  ({ child: server, base } = await startServer(certs));
  browser = await chromium.launch({
    executablePath: chromiumPath,
    env: { ...process.env, HOME: home },
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  await browser?.close();
  server?.kill("SIGTERM");
});

test("over HTTPS with the test CA trusted, the board ticks live and a Buy fills", async () => {
  const context = await browser.newContext({ ignoreHTTPSErrors: false });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (error) => errors.push(String(error)));
  const response = await page.goto(base + "/");
  assert.equal(response.status(), 200);
  assert.ok(page.url().startsWith("https://localhost:"), page.url());
  const security = await response.securityDetails();
  assert.ok(security, "the page came over TLS");
  assert.match(security.protocol, /^TLS 1\.[23]$/);
  assert.equal(security.issuer, "fxcast browser test CA");
  await page.waitForFunction(() => /^\d+\.\d{3}$/.test(document.querySelector("[data-testid=bid-USD_JPY]")?.textContent ?? ""), null, { timeout: 10000 });
  await page.waitForFunction(() => document.querySelector("#status .text")?.textContent === "live", null, { timeout: 5000 });
  await page.getByTestId("buy-USD_JPY").click();
  await page.locator("#orders tr").first().locator("td[data-testid=order-status]", { hasText: "FILLED" }).waitFor({ timeout: 5000 });
  assert.deepEqual(errors, []);
  await context.close();
});

test("without the CA installed the same page is refused as untrusted", async () => {
  const plain = await chromium.launch({
    executablePath: chromiumPath,
    env: { ...process.env, HOME: mkdtempSync(join(tmpdir(), "fxcast-home-empty-")) },
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
  try {
    const page = await plain.newPage();
    await assert.rejects(page.goto(base + "/"), /ERR_CERT_AUTHORITY_INVALID/);
  } finally {
    await plain.close();
  }
});
