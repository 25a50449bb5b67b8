"""A Prometheus that answers slowly: a loopback HTTP proxy that holds every query.

Each request waits a random time drawn uniformly from ``--delay`` (``2`` or ``1-3``
seconds), then is forwarded to ``--upstream`` and its answer returned as is. One asyncio
process holds any number of queries at once, with keep-alive, so the delay is the only
thing it adds. ``GET /-/proxy-stats`` answers the counts as JSON (never delayed).

    .venv/bin/python bench/slow_prometheus.py --upstream http://127.0.0.1:9090 --delay 1-3

It prints ``listening on 127.0.0.1:<port>`` once it accepts connections (``--port 0``: any
free port) and runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sys
import time

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web


def parse_delay(text: str) -> tuple[float, float]:
    """``2`` -> (2, 2); ``1-3`` -> (1, 3)."""
    low, _, high = text.partition("-")
    bounds = (float(low), float(high or low))
    if not 0 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"delay {text!r}: want MIN-MAX with 0 <= MIN <= MAX")
    return bounds


class SlowProxy:
    def __init__(self, upstream: str, delay: tuple[float, float], seed: int) -> None:
        self.upstream = upstream.rstrip("/")
        self.delay = delay
        self.random = random.Random(seed)
        self.session: ClientSession | None = None
        self.forwarded = 0
        self.failed = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.delayed_seconds = 0.0
        self.started = time.monotonic()

    async def start(self, app: web.Application) -> None:
        self.session = ClientSession(
            connector=TCPConnector(limit=0), timeout=ClientTimeout(total=120)
        )

    async def stop(self, app: web.Application) -> None:
        if self.session is not None:
            await self.session.close()

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({
            "forwarded": self.forwarded,
            "failed": self.failed,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "mean_delay": self.delayed_seconds / self.forwarded if self.forwarded else 0.0,
            "delay": list(self.delay),
            "uptime": time.monotonic() - self.started,
        })

    async def forward(self, request: web.Request) -> web.StreamResponse:
        assert self.session is not None
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            pause = self.random.uniform(*self.delay)
            await asyncio.sleep(pause)
            body = await request.read()
            headers = {k: v for k, v in request.headers.items()
                       if k.lower() in ("content-type", "authorization", "accept")}
            try:
                async with self.session.request(
                    request.method, self.upstream + request.path_qs, data=body or None,
                    headers=headers,
                ) as answer:
                    payload = await answer.read()
                    self.forwarded += 1
                    self.delayed_seconds += pause
                    return web.Response(
                        status=answer.status, body=payload,
                        content_type=answer.content_type or "application/json",
                    )
            except Exception as exc:  # the upstream is down: say so, as Prometheus would not
                self.failed += 1
                return web.Response(status=502, text=f"slow proxy: upstream failed: {exc!r}")
        finally:
            self.in_flight -= 1


async def serve(args: argparse.Namespace) -> None:
    proxy = SlowProxy(args.upstream, args.delay, args.seed)
    app = web.Application()
    app.on_startup.append(proxy.start)
    app.on_cleanup.append(proxy.stop)
    app.router.add_get("/-/proxy-stats", proxy.stats)
    app.router.add_route("*", "/{tail:.*}", proxy.forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port, backlog=4096)
    await site.start()
    port = int(runner.addresses[0][1])
    print(f"listening on 127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="Prometheus base URL")
    parser.add_argument("--delay", type=parse_delay, default=(1.0, 3.0),
                        help="seconds each query is held: N or MIN-MAX (default 1-3)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seed", type=int, default=1)
    asyncio.run(serve(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
