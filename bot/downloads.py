"""Fetching members' attachments before a job is admitted: bounded, streamed to disk.

Every attached clip costs a download and an ffmpeg probe before the caps at queueing can say no.
`ClipIntake` bounds that work: one member may have only `per_member` clips in flight (a second
one is refused at once, so a member cannot start twenty downloads with twenty commands), and the
whole bot `total` (others wait their turn). Downloads go to disk in chunks, never whole in memory
on the event loop, and stop as soon as more bytes arrive than the member's clip may have.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from inference.request import RequestError

CHUNK_BYTES = 256 * 1024
DOWNLOAD_TIMEOUT = aiohttp.ClientTimeout(total=120, sock_connect=15, sock_read=30)


class DownloadFailed(Exception):
    """The CDN could not give us the file (network error, timeout, HTTP error)."""


class DownloadTooLarge(Exception):
    """More bytes arrived than allowed."""


class ClipIntake:
    """Concurrency limits and the HTTP session for downloading attached clips."""

    def __init__(self, *, per_member: int, total: int) -> None:
        self.per_member = per_member
        self._total = asyncio.Semaphore(total)
        self._in_flight: Counter[int] = Counter()
        self._session: aiohttp.ClientSession | None = None

    def in_flight(self, user_id: int) -> int:
        return self._in_flight[user_id]

    @contextlib.asynccontextmanager
    async def slot(self, user_id: int) -> AsyncIterator[None]:
        """Hold one of the member's and one of the bot's slots while a clip is fetched and probed.

        Raises RequestError at once when the member already has `per_member` clips in flight;
        waits for a bot-wide slot otherwise.
        """
        if self._in_flight[user_id] >= self.per_member:
            raise RequestError(
                "I am still checking the clip you sent a moment ago. Wait for that one, then try again."
            )
        self._in_flight[user_id] += 1
        try:
            async with self._total:
                yield
        finally:
            self._in_flight[user_id] -= 1
            if not self._in_flight[user_id]:
                del self._in_flight[user_id]

    async def download(self, url: str, destination: Path, *, max_bytes: int) -> int:
        """Stream `url` into `destination` (created or replaced); returns the bytes written.

        Raises DownloadTooLarge past `max_bytes` and DownloadFailed for network or HTTP errors;
        either way nothing is left at `destination`.
        """
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=DOWNLOAD_TIMEOUT)
        written = 0
        try:
            async with self._session.get(url) as response:
                if response.status != 200:
                    raise DownloadFailed(f"HTTP {response.status}")
                with destination.open("wb") as file:
                    async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                        written += len(chunk)
                        if written > max_bytes:
                            raise DownloadTooLarge(f"more than {max_bytes} bytes")
                        file.write(chunk)
                        file.flush()  # on disk as it arrives: a stalled download shows how far it got
        except (TimeoutError, aiohttp.ClientError) as error:
            destination.unlink(missing_ok=True)
            raise DownloadFailed(str(error) or type(error).__name__) from error
        except BaseException:
            destination.unlink(missing_ok=True)
            raise
        return written

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
