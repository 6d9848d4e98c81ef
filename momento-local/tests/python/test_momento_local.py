#!/usr/bin/env python3
"""Momento's official Python SDK against `fxcast momento-local`.

Starts the fxcast binary (FXCAST_BIN, default target/debug/fxcast) with
`momento-local --listen 127.0.0.1:0 --cache fxcast`, reads the bound port from
its log line, points the SDK at it with
`CredentialProvider.for_momento_local(port=PORT)` and checks what the SDK
returns. Exits non-zero on the first failure; stops the server with SIGTERM and
checks that it exits cleanly.

The test command (scripts/test) installs the pinned SDK; the Rust test
`tests/momento_local_python.rs` (root package) runs this script during `cargo test`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

from momento import (
    AuthClientAsync,
    CacheClientAsync,
    Configurations,
    CredentialProvider,
    TopicClientAsync,
    TopicConfigurations,
)
from momento.auth.access_control.disposable_token_scopes import DisposableTokenScopes
from momento.config.auth_configurations import AuthConfigurations
from momento.errors import MomentoErrorCode
from momento.responses import (
    CacheGet,
    CacheSet,
    GenerateDisposableToken,
    ListCaches,
    TopicPublish,
    TopicSubscribe,
    TopicSubscriptionItem,
)
from momento.utilities import ExpiresIn

CACHE = "fxcast"
DEADLINE = 20.0
ROOT = Path(__file__).resolve().parents[3]


class Server:
    """`fxcast momento-local` on an ephemeral port."""

    def __init__(self) -> None:
        binary = os.environ.get("FXCAST_BIN", str(ROOT / "target" / "debug" / "fxcast"))
        env = dict(os.environ, RUST_LOG="info", NO_COLOR="1")
        self.process = subprocess.Popen(
            [binary, "momento-local", "--listen", "127.0.0.1:0", "--cache", CACHE],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.log: list[str] = []
        self.port = self._read_port()
        # Keep draining the log so the server never blocks on a full pipe.
        self._drain = threading.Thread(target=self._read_rest, daemon=True)
        self._drain.start()

    def _read_port(self) -> int:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)
            if "momento-local listening" in line:
                match = re.search(r"addr=127\.0\.0\.1:(\d+)", line)
                assert match, f"no addr= in {line!r}"
                return int(match.group(1))
        raise AssertionError("fxcast momento-local exited before listening:\n" + "".join(self.log))

    def _read_rest(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=DEADLINE)
        self._drain.join(timeout=DEADLINE)
        assert code == 0, f"exit code {code}:\n" + "".join(self.log)
        assert any("momento-local stopped" in line for line in self.log), "".join(self.log)


def topic_config() -> TopicConfigurations.Default:
    # The SDK applies its client timeout to a whole subscription.
    return TopicConfigurations.Default.latest().with_client_timeout(timedelta(seconds=60))


async def next_item(subscription: TopicSubscribe.SubscriptionAsync):
    return await asyncio.wait_for(subscription.__anext__(), DEADLINE)


async def caches_from_the_command_line_exist(creds: CredentialProvider) -> None:
    async with CacheClientAsync(Configurations.Laptop.latest(), creds, timedelta(seconds=60)) as cache:
        listed = await cache.list_caches()
        assert isinstance(listed, ListCaches.Success), listed
        assert [c.name for c in listed.caches] == [CACHE], listed


async def publish_subscribe_and_resume(creds: CredentialProvider) -> None:
    async with TopicClientAsync(topic_config(), creds) as topics:
        subscription = await topics.subscribe(CACHE, "rates.USD_JPY")
        assert isinstance(subscription, TopicSubscribe.SubscriptionAsync), subscription
        published = await topics.publish(CACHE, "rates.USD_JPY", "151.234")
        assert isinstance(published, TopicPublish.Success), published
        published = await topics.publish(CACHE, "rates.USD_JPY", b"\x00\xff")
        assert isinstance(published, TopicPublish.Success), published

        first = await next_item(subscription)
        assert isinstance(first, TopicSubscriptionItem.Text), first
        assert (first.value, first.sequence_number) == ("151.234", 1), first
        assert first.sequence_page > 0, first
        second = await next_item(subscription)
        assert isinstance(second, TopicSubscriptionItem.Binary), second
        assert (second.value, second.sequence_number) == (b"\x00\xff", 2), second
        assert second.sequence_page == first.sequence_page
        subscription.unsubscribe()

        # Resuming at a sequence number replays from it.
        resumed = await topics.subscribe(
            CACHE,
            "rates.USD_JPY",
            resume_at_topic_sequence_number=2,
            resume_at_topic_sequence_page=first.sequence_page,
        )
        assert isinstance(resumed, TopicSubscribe.SubscriptionAsync), resumed
        again = await next_item(resumed)
        assert isinstance(again, TopicSubscriptionItem.Binary), again
        assert again.sequence_number == 2, again
        resumed.unsubscribe()


async def topic_errors(creds: CredentialProvider) -> None:
    async with TopicClientAsync(topic_config(), creds) as topics:
        missing = await topics.publish("no-such-cache", "t", "x")
        assert isinstance(missing, TopicPublish.Error), missing
        assert missing.error_code == MomentoErrorCode.NOT_FOUND_ERROR, missing
        too_big = await topics.publish(CACHE, "t", "x" * 4097)
        assert isinstance(too_big, TopicPublish.Error), too_big
        assert too_big.error_code == MomentoErrorCode.LIMIT_EXCEEDED_ERROR, too_big


async def cache_set_and_get(creds: CredentialProvider) -> None:
    async with CacheClientAsync(Configurations.Laptop.latest(), creds, timedelta(seconds=60)) as cache:
        stored = await cache.set(CACHE, "greeting", "hello")
        assert isinstance(stored, CacheSet.Success), stored
        got = await cache.get(CACHE, "greeting")
        assert isinstance(got, CacheGet.Hit), got
        assert got.value_string == "hello", got
        assert isinstance(await cache.get(CACHE, "absent"), CacheGet.Miss)


async def subscribe_only_token_cannot_publish(creds: CredentialProvider, port: int) -> None:
    async with AuthClientAsync(AuthConfigurations.Laptop.latest(), creds) as auth:
        minted = await auth.generate_disposable_token(
            DisposableTokenScopes.topic_subscribe_only(CACHE, "prices"), ExpiresIn.minutes(5)
        )
        assert isinstance(minted, GenerateDisposableToken.Success), minted
    api_key = json.loads(base64.b64decode(minted.auth_token))["api_key"]
    # `from_disposable_token` would insist on TLS on port 443: build the
    # provider for the local server by hand.
    limited = CredentialProvider(api_key, "127.0.0.1", "127.0.0.1", "127.0.0.1", port)
    async with TopicClientAsync(topic_config(), limited) as topics:
        subscription = await topics.subscribe(CACHE, "prices")
        assert isinstance(subscription, TopicSubscribe.SubscriptionAsync), subscription
        subscription.unsubscribe()
        refused = await topics.publish(CACHE, "prices", "x")
        assert isinstance(refused, TopicPublish.Error), refused
        assert refused.error_code == MomentoErrorCode.PERMISSION_ERROR, refused
    async with CacheClientAsync(Configurations.Laptop.latest(), limited, timedelta(seconds=60)) as cache:
        refused_get = await cache.get(CACHE, "greeting")
        assert isinstance(refused_get, CacheGet.Error), refused_get
        assert refused_get.error_code == MomentoErrorCode.PERMISSION_ERROR, refused_get


async def main() -> None:
    server = Server()
    try:
        creds = CredentialProvider.for_momento_local(port=server.port)
        checks = [
            caches_from_the_command_line_exist(creds),
            publish_subscribe_and_resume(creds),
            topic_errors(creds),
            cache_set_and_get(creds),
            subscribe_only_token_cannot_publish(creds, server.port),
        ]
        for check in checks:
            name = check.__name__
            await asyncio.wait_for(check, 4 * DEADLINE)
            print(f"ok - {name}", flush=True)
    except BaseException:
        server.process.kill()
        sys.stderr.write("".join(server.log))
        raise
    server.stop()
    print("ok - server stopped cleanly on SIGTERM", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
