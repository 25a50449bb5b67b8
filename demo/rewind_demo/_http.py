"""Small HTTP plumbing shared by the simulators: loopback-only servers and clients.

Everything here binds to and talks to 127.0.0.1 only, so a simulator can never send
traffic off the machine, and no proxy from the environment is ever consulted.
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

LOOPBACK = "127.0.0.1"


def split_loopback_url(url: str) -> tuple[str, int, str]:
    """Return (host, port, path) of an http URL, refusing anything but 127.0.0.1."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"only http:// URLs are supported, got {url!r}")
    if parts.hostname != LOOPBACK:
        raise ValueError(f"simulated traffic goes to {LOOPBACK} only, got {url!r}")
    if parts.port is None:
        raise ValueError(f"URL needs an explicit port: {url!r}")
    return LOOPBACK, parts.port, parts.path.rstrip("/")


def request(
    method: str,
    url: str,
    body: bytes | None = None,
    *,
    timeout: float = 5.0,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """One HTTP request to a loopback URL; returns (status, body). Raises OSError on failure."""
    host, port, _ = split_loopback_url(url)
    path = urlsplit(url).path or "/"
    query = urlsplit(url).query
    if query:
        path = f"{path}?{query}"
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        hdrs = dict(headers or {})
        if body is not None:
            hdrs.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class QuietThreadingHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer whose worker threads never block interpreter exit."""

    daemon_threads = True
    allow_reuse_address = True


class BackgroundServer:
    """An HTTP server on 127.0.0.1 served from a daemon thread; stop() is idempotent."""

    def __init__(self, server: ThreadingHTTPServer) -> None:
        self.server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._stopped = False
        self._thread.start()

    @classmethod
    def start(cls, handler: type[BaseHTTPRequestHandler], port: int = 0) -> BackgroundServer:
        """Bind handler on 127.0.0.1:port (0 picks a free port) and serve it in a thread."""
        return cls(QuietThreadingHTTPServer((LOOPBACK, port), handler))

    @property
    def port(self) -> int:
        """The bound port (useful when started with port 0)."""
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:40123."""
        return f"http://{LOOPBACK}:{self.port}"

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and close the socket."""
        if self._stopped:
            return
        self._stopped = True
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout)

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
