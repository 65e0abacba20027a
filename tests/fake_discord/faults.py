"""Faults a test can inject into the fake's REST API: 429s, 5xx answers and dropped connections.

Each fault answers the next ``times`` requests that match a method and a path glob (``*`` matches
across ``/``, so ``/webhooks/*`` covers every webhook route), in the order they were injected. The
faults are the ones a bot meets on the real network:

- ``rate_limit``: a 429 exactly as Discord sends it (``Via``, ``retry_after``, ``global``, the
  ``X-RateLimit-*`` headers), per route or global; discord.py waits ``retry_after`` and retries.
- ``server_error``: a 5xx with Discord's JSON body (discord.py retries 500/502/504/524 a few times).
- ``drop``: the connection is reset (TCP RST) after the first bytes of the body arrived and before
  Discord acted on it: the client sees ``ClientOSError: [Errno 104] Connection reset by peer`` and
  nothing happened on Discord's side.
- ``drop_after``: the request takes effect, then the connection is reset before the answer is
  sent: the client sees the same error, but the message was created (a response lost in transit).
- ``hang``: the request gets no answer, and Discord does not act on it, until the test releases it
  (``fault.release()``, ``FaultPlan.clear()``) or ``hold_s`` passes; then the connection is reset.
  A client without a timeout of its own waits (aiohttp's default: 300 s).
- ``hang_after``: the same, but the request has taken effect (the message exists) before the
  answer hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fnmatch
import socket
import struct
from dataclasses import dataclass, field

from aiohttp import web


class FaultKind(enum.StrEnum):
    RATE_LIMIT = "rate_limit"
    SERVER_ERROR = "server_error"
    DROP = "drop"
    DROP_AFTER = "drop_after"
    HANG = "hang"
    HANG_AFTER = "hang_after"


@dataclass
class InjectedFault:
    """One armed fault: answers the next ``times`` matching requests, then disarms."""

    kind: FaultKind
    method: str
    path_pattern: str
    times: int
    retry_after: float = 0.05
    is_global: bool = False
    scope: str = "user"
    status: int = 502
    hold_s: float = 60.0
    served: int = 0
    served_paths: list[str] = field(default_factory=list)  # the API paths of the requests it failed
    released: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def matches(self, method: str, path: str) -> bool:
        return (
            self.times > 0 and self.method in ("*", method) and fnmatch.fnmatchcase(path, self.path_pattern)
        )

    def release(self) -> None:
        """Let the requests this fault holds end (their connections are reset)."""
        self.released.set()

    async def hold(self) -> None:
        """Hold a request until released or ``hold_s`` has passed."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.released.wait(), self.hold_s)


class FaultPlan:
    """The faults armed on a fake, and what they did."""

    def __init__(self) -> None:
        self.armed: list[InjectedFault] = []

    def add(self, fault: InjectedFault) -> InjectedFault:
        self.armed.append(fault)
        return fault

    def take(self, method: str, path: str) -> InjectedFault | None:
        """The first armed fault matching this request, used up by one."""
        for fault in self.armed:
            if fault.matches(method, path):
                fault.times -= 1
                fault.served += 1
                fault.served_paths.append(path)
                return fault
        return None

    def clear(self) -> None:
        for fault in self.armed:
            fault.times = 0
            fault.release()

    @property
    def pending(self) -> int:
        """Requests still to be failed by the armed faults."""
        return sum(fault.times for fault in self.armed)


async def reset_connection(request: web.Request) -> None:
    """Reset the TCP connection of ``request`` as a broken network path would.

    The first chunk of the body is read first, so an upload is cut off mid-way. SO_LINGER 0 makes
    the close send an RST, which the client reports as errno 104 (ECONNRESET), like production.
    """
    if request.body_exists and not request.content.at_eof():
        with contextlib.suppress(ConnectionError):  # a client that gave up on a hung request left already
            await request.content.readany()
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
