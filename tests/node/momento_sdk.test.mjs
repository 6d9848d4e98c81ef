// Momento's official Node.js SDK against `fxcast momento-local`, which holds
// clients to the hosted service's limits: topics and cache items round-trip,
// disposable tokens live at most an hour, and a connection holds at most 100
// subscriptions (past it the server answers with the hosted service's error).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import {
  AuthClient, CacheClient, CacheGetResponse, Configurations, CredentialProvider,
  ExpiresIn, GenerateDisposableTokenResponse, MomentoErrorCode, TopicClient,
  TopicConfigurations, TopicPublishResponse, TopicRole, TopicSubscribeResponse,
} from "@gomomento/sdk";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const binary = process.env.FXCAST_BIN || join(process.env.CARGO_TARGET_DIR || join(root, "target"), "debug", "fxcast");
const CACHE = "fxcast";
let server, port;

function startMomentoLocal(extra = []) {
  const child = spawn(binary, ["momento-local", "--listen", "127.0.0.1:0", "--cache", CACHE, ...extra],
    { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, RUST_LOG: "info", NO_COLOR: "1" } });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("momento-local did not log its address")), 30000);
    createInterface({ input: child.stderr }).on("line", (line) => {
      const match = line.match(/momento-local listening .*addr=127\.0\.0\.1:(\d+)/);
      if (match) {
        clearTimeout(timer);
        resolve({ child, port: Number(match[1]) });
      }
    });
    child.on("error", (error) => reject(new Error(`cannot start ${binary}: ${error.message}`)));
    child.on("exit", (code) => reject(new Error(`momento-local exited with ${code}`)));
  });
}

const credentials = (at = port) => CredentialProvider.forMomentoLocal({ hostname: "127.0.0.1", port: at });

function topics(streamConnections = 1, at = port) {
  return new TopicClient({
    configuration: TopicConfigurations.Default.latest().withNumStreamConnections(streamConnections),
    credentialProvider: credentials(at),
  });
}

/** Subscribes to `topic`; resolves with the subscription once it is live,
 * and collects what arrives into `items`. */
async function subscribe(client, topic, items = []) {
  const response = await client.subscribe(CACHE, topic, {
    onItem: (item) => items.push(item),
    onError: () => {},
  });
  return { response, items };
}

async function until(check, what) {
  const deadline = Date.now() + 20000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

before(async () => {
  ({ child: server, port } = await startMomentoLocal());
});

after(() => server?.kill());

test("topics and cache items round-trip", async () => {
  const client = topics();
  const { response, items } = await subscribe(client, "rates.USD_JPY");
  assert.equal(response.type, TopicSubscribeResponse.Subscription);
  const published = await client.publish(CACHE, "rates.USD_JPY", "151.23");
  assert.equal(published.type, TopicPublishResponse.Success);
  await until(() => items.length === 1, "the published message");
  assert.equal(items[0].valueString(), "151.23");
  response.unsubscribe();

  const cache = await CacheClient.create({
    configuration: Configurations.Laptop.latest(),
    credentialProvider: credentials(),
    defaultTtlSeconds: 60,
  });
  await cache.set(CACHE, "latest:rates.USD_JPY", "151.23");
  const got = await cache.get(CACHE, "latest:rates.USD_JPY");
  assert.equal(got.type, CacheGetResponse.Hit);
  assert.equal(got.valueString(), "151.23");
});

test("disposable tokens live at most an hour", async () => {
  const auth = new AuthClient({ credentialProvider: credentials() });
  const scope = { permissions: [{ role: TopicRole.SubscribeOnly, cache: CACHE, topic: "rates.USD_JPY" }] };
  const hour = await auth.generateDisposableToken(scope, ExpiresIn.hours(1));
  assert.equal(hour.type, GenerateDisposableTokenResponse.Success, hour.toString());
  const two = await auth.generateDisposableToken(scope, ExpiresIn.hours(2));
  assert.equal(two.type, GenerateDisposableTokenResponse.Error);
  assert.equal(two.errorCode(), MomentoErrorCode.INVALID_ARGUMENT_ERROR, two.toString());
  assert.match(two.message(), /within 1 second to 3600 seconds/);
});

test("the server refuses a subscription past its per-connection cap with the hosted error", async () => {
  // The Node SDK itself stops at 100 per connection (CLIENT_RESOURCE_EXHAUSTED)
  // before the server would, so the server's own refusal is seen with a
  // lower cap: the SDK sends the 4th and the server answers as hosted does.
  const small = await startMomentoLocal(["--max-subscriptions-per-connection", "3"]);
  try {
    const client = topics(1, small.port);
    const held = [];
    for (let i = 0; i < 3; i++) {
      const { response } = await subscribe(client, `t${i}`);
      assert.equal(response.type, TopicSubscribeResponse.Subscription, `subscription ${i}: ${response}`);
      held.push(response);
    }
    const { response: refused } = await subscribe(client, "t3");
    assert.equal(refused.type, TopicSubscribeResponse.Error, `${refused}`);
    assert.equal(refused.errorCode(), MomentoErrorCode.LIMIT_EXCEEDED_ERROR, refused.toString());
    assert.match(refused.message(), /Too many subscribers \(limit: 3\)/);
    // A subscription ended frees its place on the connection.
    held.shift().unsubscribe();
    await until(async () => (await subscribe(client, "t3")).response.type === TopicSubscribeResponse.Subscription,
      "the freed place");
    for (const subscription of held) subscription.unsubscribe();
  } finally {
    small.child.kill();
  }
});

test("the hosted cap of 100 holds per connection, not per client", async () => {
  // Two stream connections carry 150 subscriptions between them; the server
  // counts each connection on its own, so none is refused.
  const client = topics(2);
  const held = [];
  for (let i = 0; i < 150; i++) {
    const { response } = await subscribe(client, `many${i}`);
    assert.equal(response.type, TopicSubscribeResponse.Subscription, `subscription ${i}: ${response}`);
    held.push(response);
  }
  for (const subscription of held) subscription.unsubscribe();
});
