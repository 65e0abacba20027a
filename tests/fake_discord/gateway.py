"""The fake gateway: HELLO / IDENTIFY / READY / GUILD_CREATE, heartbeats, RESUME, sharding, dispatch."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSCloseCode, WSMsgType, web

from .constants import GatewayClose, GatewayOp, Intent

if TYPE_CHECKING:
    from .server import FakeDiscord

_log = logging.getLogger(__name__)


@dataclass(eq=False)
class GatewaySession:
    """One identified gateway session (one per shard); survives disconnects until resumed or ended."""

    session_id: str
    shard_id: int
    shard_count: int
    intents: int
    sequence: int = 0
    events: list[tuple[int, str]] = field(default_factory=list)
    socket: web.WebSocketResponse | None = None
    ended: bool = False
    identify_payload: dict[str, Any] = field(default_factory=dict)

    def covers_guild(self, guild_id: int | None) -> bool:
        """Discord's shard formula: (guild_id >> 22) % shard_count; DMs go to shard 0."""
        if guild_id is None:
            return self.shard_id == 0
        return (guild_id >> 22) % self.shard_count == self.shard_id

    def has_intent(self, intent: int) -> bool:
        return bool(self.intents & intent)


class Gateway:
    """Serves the websocket and keeps sessions; ``FakeDiscord.dispatch`` goes through ``send_event``."""

    def __init__(self, fake: FakeDiscord) -> None:
        self.fake = fake
        self.sessions: dict[str, GatewaySession] = {}
        self.sockets: set[web.WebSocketResponse] = set()
        self.identify_count = 0
        self.resume_count = 0
        self.replayed_count = 0
        self.heartbeat_count = 0
        self.connect_paths: list[str] = []
        self.closed_codes: list[int | None] = []
        self.received: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()

    # -- state the tests look at -------------------------------------------------------------
    def live_sessions(self) -> list[GatewaySession]:
        return [s for s in self.sessions.values() if not s.ended]

    def connected_sessions(self) -> list[GatewaySession]:
        return [s for s in self.live_sessions() if s.socket is not None and not s.socket.closed]

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        async def waiter() -> None:
            async with self._changed:
                await self._changed.wait_for(predicate)

        await asyncio.wait_for(waiter(), timeout)

    # -- sending ---------------------------------------------------------------------------
    async def _send_raw(self, session: GatewaySession, frame: str) -> None:
        socket = session.socket
        if socket is None or socket.closed:
            return
        try:
            await socket.send_str(frame)
        except (ConnectionResetError, RuntimeError):
            session.socket = None

    async def send_dispatch(self, session: GatewaySession, event: str, data: Any) -> None:
        session.sequence += 1
        frame = json.dumps({"op": GatewayOp.DISPATCH, "t": event, "s": session.sequence, "d": data})
        session.events.append((session.sequence, frame))
        await self._send_raw(session, frame)

    async def send_event(
        self,
        event: str,
        data: Any | Callable[[GatewaySession], Any],
        *,
        guild_id: int | None,
        intent: int | None,
    ) -> int:
        """Dispatch to every live session whose shard covers ``guild_id`` and that asked for ``intent``.

        ``data`` may be a function of the session (e.g. to blank content without the content intent).
        Disconnected sessions buffer the event for RESUME. Returns how many sessions got it.
        """
        sent = 0
        for session in self.live_sessions():
            if not session.covers_guild(guild_id):
                continue
            if intent is not None and not session.has_intent(intent):
                continue
            payload = data(session) if callable(data) else data
            await self.send_dispatch(session, event, payload)
            sent += 1
        return sent

    # -- the websocket ---------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(max_msg_size=0, autoping=True)
        await socket.prepare(request)
        self.sockets.add(socket)
        self.connect_paths.append(request.path)
        session: GatewaySession | None = None
        try:
            await socket.send_str(
                json.dumps(
                    {
                        "op": GatewayOp.HELLO,
                        "d": {"heartbeat_interval": self.fake.heartbeat_interval_ms},
                        "s": None,
                        "t": None,
                    }
                )
            )
            async for message in socket:
                if message.type != WSMsgType.TEXT:
                    if message.type == WSMsgType.BINARY:
                        await socket.close(
                            code=GatewayClose.DECODE_ERROR, message=b"Error while decoding payload."
                        )
                    break
                try:
                    frame = json.loads(message.data)
                except ValueError:
                    await socket.close(
                        code=GatewayClose.DECODE_ERROR, message=b"Error while decoding payload."
                    )
                    break
                self.received.append(frame)
                op = frame.get("op")
                data = frame.get("d")
                if op == GatewayOp.HEARTBEAT:
                    self.heartbeat_count += 1
                    await socket.send_str(
                        json.dumps({"op": GatewayOp.HEARTBEAT_ACK, "d": None, "s": None, "t": None})
                    )
                elif op == GatewayOp.IDENTIFY:
                    if session is not None:
                        await socket.close(
                            code=GatewayClose.ALREADY_AUTHENTICATED, message=b"Already authenticated."
                        )
                        break
                    session = await self._identify(socket, data or {})
                elif op == GatewayOp.RESUME:
                    if session is not None:
                        await socket.close(
                            code=GatewayClose.ALREADY_AUTHENTICATED, message=b"Already authenticated."
                        )
                        break
                    session = await self._resume(socket, data or {})
                elif session is None:
                    await socket.close(code=GatewayClose.NOT_AUTHENTICATED, message=b"Not authenticated.")
                    break
                elif op == GatewayOp.REQUEST_GUILD_MEMBERS:
                    await self._request_members(session, data or {})
                elif op in (GatewayOp.PRESENCE_UPDATE, GatewayOp.VOICE_STATE_UPDATE):
                    self.fake.presence_updates.append(data)
                else:
                    await socket.close(code=GatewayClose.UNKNOWN_ERROR, message=b"Unknown opcode.")
                    break
        finally:
            self.sockets.discard(socket)
            code = socket.close_code
            self.closed_codes.append(code)
            if session is not None and session.socket is socket:
                session.socket = None
                # A clean close from the client ends the session; any other drop can be resumed.
                if code in (WSCloseCode.OK, 1001) and not getattr(socket, "_fake_server_close", False):
                    session.ended = True
            await self._notify()
        return socket

    async def _identify(self, socket: web.WebSocketResponse, data: dict[str, Any]) -> GatewaySession | None:
        fake = self.fake
        if data.get("token") != fake.bot_token:
            await socket.close(code=GatewayClose.AUTHENTICATION_FAILED, message=b"Authentication failed.")
            return None
        intents = int(data.get("intents", 0))
        for name, bit in Intent.PRIVILEGED.items():
            if intents & bit and name not in fake.privileged_intents:
                await socket.close(code=GatewayClose.DISALLOWED_INTENTS, message=b"Disallowed intent(s).")
                return None
        shard_id, shard_count = data.get("shard") or [0, 1]
        if not (0 <= shard_id < shard_count):
            await socket.close(code=GatewayClose.INVALID_SHARD, message=b"Invalid shard.")
            return None
        for other in self.live_sessions():  # a new IDENTIFY for a shard replaces its old session
            if other.shard_id == shard_id and other.shard_count == shard_count:
                other.ended = True
        session = GatewaySession(
            session_id=secrets.token_hex(16),
            shard_id=shard_id,
            shard_count=shard_count,
            intents=intents,
            socket=socket,
            identify_payload=data,
        )
        self.sessions[session.session_id] = session
        self.identify_count += 1
        guilds = [g for g in fake.guilds.values() if session.covers_guild(g.id)]
        ready: dict[str, Any] = {
            "v": 10,
            "user": {**fake.bot_user.to_payload(), "verified": True, "mfa_enabled": False, "email": None},
            "user_settings": {},
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "session_id": session.session_id,
            "session_type": "normal",
            "resume_gateway_url": fake.resume_gateway_url,
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": ["fake"],
            "application": {"id": str(fake.application_id), "flags": fake.application_flags},
            "auth": {},
            "_trace": ['["fake-gateway",{"micros":0}]'],
        }
        if data.get("shard") is not None:
            ready["shard"] = [shard_id, shard_count]
        await self.send_dispatch(session, "READY", ready)
        if session.has_intent(Intent.GUILDS):
            for guild in guilds:
                await self.send_dispatch(session, "GUILD_CREATE", guild.to_create_payload())
        await self._notify()
        return session

    async def _resume(self, socket: web.WebSocketResponse, data: dict[str, Any]) -> GatewaySession | None:
        session = self.sessions.get(str(data.get("session_id")))
        if data.get("token") != self.fake.bot_token:
            await socket.close(code=GatewayClose.AUTHENTICATION_FAILED, message=b"Authentication failed.")
            return None
        if session is None or session.ended:
            await socket.send_str(
                json.dumps({"op": GatewayOp.INVALID_SESSION, "d": False, "s": None, "t": None})
            )
            return None
        session.socket = socket
        last_seen = data.get("seq") or 0
        for sequence, frame in list(session.events):
            if sequence > last_seen:
                self.replayed_count += 1
                await self._send_raw(session, frame)
        await self.send_dispatch(session, "RESUMED", {"_trace": ['["fake-gateway",{"micros":0}]']})
        self.resume_count += 1
        await self._notify()
        return session

    async def _request_members(self, session: GatewaySession, data: dict[str, Any]) -> None:
        guild = self.fake.guilds.get(int(data.get("guild_id", 0)))
        if guild is None:
            return
        members = list(guild.members.values())
        if data.get("user_ids"):
            wanted = {
                int(x)
                for x in (data["user_ids"] if isinstance(data["user_ids"], list) else [data["user_ids"]])
            }
            members = [m for m in members if m.id in wanted]
        elif data.get("query"):
            members = [m for m in members if m.name.lower().startswith(str(data["query"]).lower())]
        limit = data.get("limit") or 0
        if limit:
            members = members[:limit]
        chunk: dict[str, Any] = {
            "guild_id": str(guild.id),
            "members": [m.to_payload() for m in members],
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": [],
        }
        if data.get("nonce") is not None:
            chunk["nonce"] = data["nonce"]
        await self.send_dispatch(session, "GUILD_MEMBERS_CHUNK", chunk)

    # -- test controls ---------------------------------------------------------------------
    async def drop(self, code: int = GatewayClose.UNKNOWN_ERROR) -> list[GatewaySession]:
        """Close every connected socket with ``code`` (4000 by default: resumable)."""
        dropped = self.connected_sessions()
        for session in dropped:
            socket = session.socket
            assert socket is not None
            socket._fake_server_close = True  # type: ignore[attr-defined]
            session.socket = None  # from now on events wait in the session buffer for RESUME
            if code in (WSCloseCode.OK, 1001) or code in (4004, 4010, 4011, 4012, 4013, 4014):
                session.ended = True
            await socket.close(code=code, message=b"fake gateway drop")
        return dropped

    async def send_reconnect(self) -> None:
        """Send op 7 RECONNECT: the client closes and resumes."""
        for session in self.connected_sessions():
            assert session.socket is not None
            await session.socket.send_str(
                json.dumps({"op": GatewayOp.RECONNECT, "d": None, "s": None, "t": None})
            )

    async def invalidate(self, *, resumable: bool = False) -> None:
        """Send op 9 INVALID_SESSION to every connected session."""
        for session in self.connected_sessions():
            if not resumable:
                session.ended = True
            assert session.socket is not None
            await session.socket.send_str(
                json.dumps({"op": GatewayOp.INVALID_SESSION, "d": resumable, "s": None, "t": None})
            )

    async def close_all(self) -> None:
        for socket in list(self.sockets):
            socket._fake_server_close = True  # type: ignore[attr-defined]
            await socket.close(code=1001, message=b"fake discord shutting down")
