#!/usr/bin/env python3
"""fxcast's rates as Momento's official Python SDK receives them.

A consumer that never talks to fxcast: it subscribes to a `rates.<SYMBOL>`
topic on Momento (here `fxcast momento-local`) with the disposable token that
fxcast's IssueToken handed out, decodes each message (one protobuf-encoded
`fxcast.v1.Rate`), and checks that the token cannot publish.

Driven by tests/momento.rs, through the environment:
  MOMENTO_PORT   momento-local's port on 127.0.0.1
  MOMENTO_TOKEN  the disposable token (IssueTokenResponse.momento.token)
  MOMENTO_CACHE  the cache (IssueTokenResponse.momento.cache_name)
  TOPIC          e.g. rates.USD_JPY
  COUNT          how many rates to print before exiting

Prints `subscribed` once the subscription is established, then one JSON
line per rate, then `publish refused`. Exits non-zero on the first failure.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from datetime import timedelta

from momento import CredentialProvider, TopicClientAsync, TopicConfigurations
from momento.errors import MomentoErrorCode
from momento.responses import TopicPublish, TopicSubscribe, TopicSubscriptionItem

DEADLINE = 20.0


def varint(data: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def decode_rate(data: bytes) -> dict:
    """The fields of an `fxcast.v1.Rate` a consumer needs (proto/fxcast/v1/rates.proto)."""
    names = {1: "symbol", 2: "bid", 3: "ask", 7: "rate_id", 8: "source"}
    rate: dict = {"sequence": 0, "stale": False}
    at = 0
    while at < len(data):
        key, at = varint(data, at)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, at = varint(data, at)
            if field == 4:
                rate["sequence"] = value
            elif field == 9:
                rate["stale"] = bool(value)
        elif wire == 2:
            length, at = varint(data, at)
            value = data[at : at + length]
            at += length
            if field in names:
                rate[names[field]] = value.decode("utf-8")
        else:
            raise ValueError(f"unexpected wire type {wire} for field {field}")
    return rate


async def main() -> None:
    port = int(os.environ["MOMENTO_PORT"])
    cache = os.environ["MOMENTO_CACHE"]
    topic = os.environ["TOPIC"]
    count = int(os.environ["COUNT"])
    # The token is base64 of {"endpoint", "api_key"}; `from_disposable_token`
    # would insist on TLS on port 443, so build the local provider by hand.
    api_key = json.loads(base64.b64decode(os.environ["MOMENTO_TOKEN"]))["api_key"]
    credentials = CredentialProvider(api_key, "127.0.0.1", "127.0.0.1", "127.0.0.1", port)
    # The SDK applies its client timeout to a whole subscription.
    config = TopicConfigurations.Default.latest().with_client_timeout(timedelta(seconds=60))
    async with TopicClientAsync(config, credentials) as topics:
        subscription = await topics.subscribe(cache, topic)
        assert isinstance(subscription, TopicSubscribe.SubscriptionAsync), subscription
        print("subscribed", flush=True)
        for _ in range(count):
            item = await asyncio.wait_for(subscription.__anext__(), DEADLINE)
            assert isinstance(item, TopicSubscriptionItem.Binary), item
            print(json.dumps(decode_rate(item.value)), flush=True)
        subscription.unsubscribe()

        refused = await topics.publish(cache, topic, b"forged")
        assert isinstance(refused, TopicPublish.Error), refused
        assert refused.error_code == MomentoErrorCode.PERMISSION_ERROR, refused
        print("publish refused", flush=True)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as error:  # report anything, then fail
        print(f"FAILED: {error!r}", file=sys.stderr, flush=True)
        raise
