"""A proxy between an unmodified provider SDK and its simulator (real HTTP on both sides)
that can make the provider lie: :attr:`LyingProxy.lie` rewrites the body of the answers
whose request path it matches -- e.g. an answer about another payment than was asked."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
from aiohttp import web

#: (request path) -> whether to rewrite its answer, and the rewrite of the answer's text.
Lie = tuple[Callable[[str], bool], Callable[[str], str]]

_HOP = {"host", "content-length", "accept-encoding", "connection", "transfer-encoding"}


class LyingProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.lie: Lie | None = None
        self.lies_told = 0
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        assert self._session is not None
        body = await request.read()
        fwd = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with self._session.request(request.method, self.upstream + request.path_qs,
                                         data=body, headers=fwd) as resp:
            status, text = resp.status, await resp.text()
            content_type = resp.content_type
        if self.lie is not None and 200 <= status < 300 and self.lie[0](request.path):
            text = self.lie[1](text)
            self.lies_told += 1
        return web.Response(status=status, text=text, content_type=content_type)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=True)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
