"""One aiohttp session per adapter that speaks HTTP from the event loop (notifications,
the model registry): opened on first use, so an adapter built outside a running loop (as
at import or in a unit test) holds none, and closed with the adapter."""

from __future__ import annotations

import aiohttp


class LazySession:
    """An ``aiohttp.ClientSession`` with a total ``timeout`` (seconds) per request and
    ``user_agent``, opened on first :meth:`get` and again after :meth:`close`."""

    def __init__(self, user_agent: str, timeout: float) -> None:
        self.user_agent = user_agent
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def get(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"User-Agent": self.user_agent},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
