"""Webhook delivery retries of the simulators (providers/simulator/webhooks.py): like
real providers they keep retrying an unacknowledged notification with backoff, so a
gateway that was down for a couple of seconds (a crash and restart) still gets it, and
a notification being retried never holds up the ones behind it."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from providers.simulator.webhooks import WebhookSender


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def eventually(check: Callable[[], Awaitable[bool] | bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while True:
        got = check()
        if got if isinstance(got, bool) else await got:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.02)


class Receiver:
    """A gateway stand-in on a fixed port: answers ``fail`` (per body) non-2xx first."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.got: list[bytes] = []
        self.fail: dict[bytes, int] = {}
        self.runner: web.AppRunner | None = None

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.fail.get(body, 0) > 0:
            self.fail[body] -= 1
            return web.Response(status=500)
        self.got.append(body)
        return web.Response(text="[accepted]")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks", self.hook)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver(free_port())
    yield r
    await r.stop()


def sender_for(r: Receiver, **kw: float) -> WebhookSender:
    return WebhookSender(f"http://127.0.0.1:{r.port}/hooks", **kw)


async def test_a_notification_sent_while_the_receiver_is_down_arrives_after_it_is_back(
    receiver: Receiver,
) -> None:
    sender = sender_for(receiver)
    try:
        sender.send(b"capture", {})
        await sender.drain()
        assert sender.retries_due == 1  # refused, not given up
        await asyncio.sleep(2.0)  # down far longer than the old ~0.6 s of retries
        assert receiver.got == []
        await receiver.start()
        await eventually(lambda: receiver.got == [b"capture"])
        await eventually(lambda: sender.retries_due == 0)
        statuses = [d.status for d in sender.deliveries]
        assert statuses[-1] == 200 and statuses.count(200) == 1
        assert all(s is None for s in statuses[:-1]) and len(statuses) >= 4
        assert [d.attempt for d in sender.deliveries] == list(range(1, len(statuses) + 1))
    finally:
        await sender.close()


async def test_a_notification_being_retried_does_not_hold_up_the_next(
    receiver: Receiver,
) -> None:
    await receiver.start()
    receiver.fail[b"first"] = 3
    sender = sender_for(receiver, backoff_s=0.3)
    try:
        sender.send(b"first", {})
        sender.send(b"second", {})
        await eventually(lambda: receiver.got == [b"second", b"first"])
        # the receiver has the body before the sender has read the 200 and cleared its retry
        await eventually(lambda: sender.retries_due == 0)
        assert [(d.status, d.attempt) for d in sender.deliveries] == [
            (500, 1), (200, 1), (500, 2), (500, 3), (200, 4)]
    finally:
        await sender.close()


async def test_retries_give_up_after_retry_for_s(receiver: Receiver) -> None:
    await receiver.start()
    receiver.fail[b"never"] = 10**6
    sender = sender_for(receiver, retry_for_s=0.6, backoff_s=0.05, backoff_max_s=0.2)
    try:
        t0 = time.monotonic()
        sender.send(b"never", {})
        await sender.drain(retries=True)
        assert time.monotonic() - t0 < 1.0
        assert sender.retries_due == 0 and receiver.got == []
        assert 3 <= len(sender.deliveries) <= 15
        assert all(d.status == 500 for d in sender.deliveries)
    finally:
        await sender.close()


async def test_close_cancels_the_retries_still_due(receiver: Receiver) -> None:
    sender = sender_for(receiver, backoff_s=0.1)
    sender.send(b"a", {})
    sender.send(b"b", {})
    await sender.drain()
    assert sender.retries_due == 2
    await sender.close()
    assert sender.retries_due == 0
    attempted = len(sender.deliveries)
    await receiver.start()
    await asyncio.sleep(0.5)
    assert receiver.got == [] and len(sender.deliveries) == attempted


async def test_cancel_retries_drops_the_retries_still_due(receiver: Receiver) -> None:
    sender = sender_for(receiver, backoff_s=0.1)
    try:
        sender.send(b"forgotten", {})
        await sender.drain()
        assert sender.retries_due == 1
        sender.cancel_retries()  # what a simulator's reset does
        await eventually(lambda: sender.retries_due == 0)
        await receiver.start()
        sender.send(b"new", {})
        await eventually(lambda: receiver.got == [b"new"])
        await asyncio.sleep(0.3)
        assert receiver.got == [b"new"]
    finally:
        await sender.close()
