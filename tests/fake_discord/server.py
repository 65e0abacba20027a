"""FakeDiscord: an aiohttp server speaking Discord's REST, gateway and CDN protocols to discord.py."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import mimetypes
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import yarl
from aiohttp import web

from .commands import (
    CommandSchemaError,
    FakeDiscordValidationError,
    RegisteredCommand,
    build_invocation,
    check_command_payloads,
    member_can_see,
)
from .components import modal_text_inputs, validate_buttons, validate_modal
from .constants import (
    DEFAULT_BOT_PERMISSIONS,
    DEFAULT_MEMBER_PERMISSIONS,
    MIB,
    CallbackType,
    ChannelType,
    CommandType,
    ErrorCode,
    Intent,
    InteractionType,
    Limit,
    MessageFlag,
    MessageType,
    Permission,
)
from .faults import FaultKind, FaultPlan, InjectedFault, reset_connection
from .gateway import Gateway, GatewaySession
from .http_utils import (
    DiscordHTTPError,
    RateLimitBuckets,
    RequestBody,
    Upload,
    form_error,
    invalid_form_body,
    json_response,
    no_content,
    not_found,
    rate_limit_response,
    read_body,
)
from .models import (
    CallbackRecord,
    FakeAttachment,
    FakeChannel,
    FakeGuild,
    FakeInteraction,
    FakeMember,
    FakeMessage,
    FakeRole,
    FakeUser,
    iso_timestamp,
    new_snowflake,
)

Handler = Callable[["RequestContext"], Awaitable[web.StreamResponse]]
_MENTION = re.compile(r"<@!?(\d+)>")
# A 1x1 transparent PNG for avatar/icon requests on the fake CDN.
# Discord checks an enforced nonce "in the past few minutes"; the fake keeps the short end of that.
_NONCE_WINDOW_S = 120.0
_TINY_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)


@dataclass
class RequestRecord:
    """One REST request the bot made (for assertions such as "no more than N edits")."""

    method: str
    path: str
    route: str | None
    status: int
    at: float
    payload: dict[str, Any] | None = None
    dropped: bool = False  # the connection was reset: the bot got no answer (see ``inject_connection_drop``)


@dataclass
class RequestContext:
    request: web.Request
    params: dict[str, str]
    route: str
    payload: Any = None  # the parsed JSON / payload_json, kept for the request log

    @property
    def query(self) -> Any:
        return self.request.query

    async def body(self, *, file_size_limit: int) -> RequestBody:
        body = await read_body(self.request, file_size_limit=file_size_limit)
        self.payload = body.payload
        return body

    async def json(self) -> Any:
        raw = await self.request.read()
        try:
            self.payload = json.loads(raw) if raw else {}
        except ValueError:
            raise DiscordHTTPError(400, ErrorCode.GENERAL, "400: Bad Request") from None
        return self.payload


@dataclass
class _Route:
    method: str
    template: str
    pattern: re.Pattern[str]
    handler: Handler
    auth: bool
    limit: tuple[int, float] | None  # (requests, seconds); None: not rate limited (interaction callbacks)
    major: str | None


def _sanitize_filename(filename: str) -> str:
    """Discord replaces spaces and drops characters it does not keep in attachment names."""
    name = filename.replace(" ", "_")
    name = re.sub(r"[^\w.\-]", "", name, flags=re.ASCII)
    return name or "unknown"


def _resolve_attachment_urls(embed: dict[str, Any], attachments: list[FakeAttachment]) -> dict[str, Any]:
    """Discord rewrites an embed's ``attachment://name`` image, thumbnail or author icon into that
    attachment's CDN url (one the message does not carry stays as written, and shows nothing)."""
    by_name = {attachment.filename: attachment for attachment in attachments}
    resolved = dict(embed)
    for key, url_key in (
        ("image", "url"),
        ("thumbnail", "url"),
        ("author", "icon_url"),
        ("footer", "icon_url"),
    ):
        part = embed.get(key)
        if not isinstance(part, dict):
            continue
        url = part.get(url_key)
        if isinstance(url, str) and url.startswith("attachment://") and url[13:] in by_name:
            attachment = by_name[url[13:]]
            resolved[key] = {**part, url_key: attachment.url, f"proxy_{url_key}": attachment.proxy_url}
    return resolved


class FakeDiscord:
    """A fake Discord (REST + gateway + CDN) on 127.0.0.1 for the real discord.py client.

    See tests/fake_discord/README.md for the test-facing API.
    """

    def __init__(
        self,
        *,
        bot_name: str = "MusicGen",
        recommended_shards: int = 1,
        heartbeat_interval_ms: int = 41_250,
        response_deadline_s: float = Limit.INTERACTION_RESPONSE_SECONDS,
        privileged_intents: Sequence[str] = ("members", "presences", "message_content"),
        daily_command_create_limit: int = Limit.DAILY_COMMAND_CREATES,
        enforce_rate_limits: bool = True,
    ) -> None:
        self.application_id = new_snowflake()
        self.bot_user = FakeUser(id=self.application_id, username=bot_name, bot=True)
        self.bot_token = "fake." + secrets.token_urlsafe(24)
        self.owner_user = FakeUser(id=new_snowflake(), username="bot-owner")
        self.application_flags = (1 << 12) | (1 << 15) | (1 << 19)  # the three privileged intents, "limited"
        self.recommended_shards = recommended_shards
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.response_deadline_s = response_deadline_s
        self.privileged_intents = set(privileged_intents)
        self.daily_command_create_limit = daily_command_create_limit
        self.enforce_rate_limits = enforce_rate_limits

        self.users: dict[int, FakeUser] = {
            self.bot_user.id: self.bot_user,
            self.owner_user.id: self.owner_user,
        }
        self.guilds: dict[int, FakeGuild] = {}
        self.channels: dict[int, FakeChannel] = {}
        self.dm_channels: dict[int, FakeChannel] = {}
        self.messages_by_id: dict[int, FakeMessage] = {}
        self._channel_messages: dict[int, list[FakeMessage]] = {}
        self.interactions: dict[int, FakeInteraction] = {}
        self._interactions_by_token: dict[str, FakeInteraction] = {}
        self.commands: dict[int | None, dict[tuple[str, int], RegisteredCommand]] = {}
        self._command_creates: dict[tuple[int | None, int], int] = {}
        self.attachments: dict[str, FakeAttachment] = {}  # CDN path -> attachment

        self.requests: list[RequestRecord] = []
        self.unhandled_requests: list[str] = []
        self.cdn_downloads: list[FakeAttachment] = []
        self.cdn_misses: list[str] = []
        self._cdn_release: asyncio.Event | None = None  # set while downloads are held
        self.typing: list[FakeChannel] = []
        self.presence_updates: list[Any] = []
        self.invalid_request_count = 0
        self._invalid_request_times: list[float] = []
        self.faults = FaultPlan()
        # (author id, nonce) -> (message, fake-clock time): enforce_nonce deduplicates within a window.
        self._nonces: dict[tuple[int, str], tuple[FakeMessage, float]] = {}
        self._buckets = RateLimitBuckets()
        self._clock_offset = 0.0
        self._world_changed = asyncio.Condition()
        self._background: set[asyncio.Task[Any]] = set()

        self.gateway = Gateway(self)
        self._routes: list[_Route] = []
        self._register_routes()
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    # ======================================================================================
    # lifecycle and patching
    # ======================================================================================
    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("FakeDiscord is not started: await fake.start() first")
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    @property
    def resume_gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/resume-gateway"

    @property
    def cdn_base(self) -> str:
        return f"{self.url}/cdn"

    @property
    def media_base(self) -> str:
        return f"{self.url}/media"

    async def start(self) -> FakeDiscord:
        """Start listening on 127.0.0.1 on a random free port."""
        app = web.Application(client_max_size=256 * MIB)
        for path in ("/gateway", "/gateway/", "/resume-gateway", "/resume-gateway/"):
            app.router.add_get(path, self.gateway.handle)
        app.router.add_get("/cdn/{tail:.*}", self._serve_cdn)
        app.router.add_get("/media/{tail:.*}", self._serve_cdn)
        app.router.add_route("*", "/{tail:.*}", self._dispatch_rest)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def close(self) -> None:
        """Close every gateway socket and stop the server."""
        self.faults.clear()  # requests held by a hang end now
        await self.gateway.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        self._patch = self.patched_discord()
        self._patch.__enter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._patch.__exit__(None, None, None)
        await self.close()

    @contextlib.contextmanager
    def patched_discord(self) -> Iterator[FakeDiscord]:
        """Point discord.py's REST base, default gateway and CDN base at this fake; restore on exit."""
        import discord.asset
        import discord.gateway
        import discord.http

        saved = (
            discord.http.Route.BASE,
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY,
            discord.asset.Asset.BASE,
        )
        discord.http.Route.BASE = self.api_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url + "/")
        discord.asset.Asset.BASE = self.cdn_base
        try:
            yield self
        finally:
            (
                discord.http.Route.BASE,
                discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY,
                discord.asset.Asset.BASE,
            ) = saved

    # ======================================================================================
    # clock
    # ======================================================================================
    def clock(self) -> float:
        """The fake's notion of now (seconds); ``advance_clock`` moves it forward."""
        return time.monotonic() + self._clock_offset

    def advance_clock(self, seconds: float) -> None:
        """Pretend ``seconds`` passed: interaction deadlines (3 s) and token lifetimes (15 min) see it."""
        self._clock_offset += seconds

    def expire_interaction(self, interaction: FakeInteraction) -> None:
        """Make the interaction's token expire now (as 15 minutes later): followups and edits get 401 50027."""
        interaction.token_expired = True

    # ======================================================================================
    # building the world
    # ======================================================================================
    def add_guild(
        self,
        name: str,
        *,
        attachment_size_limit: int = Limit.DEFAULT_ATTACHMENT_BYTES,
        premium_tier: int = 0,
        everyone_permissions: int = DEFAULT_MEMBER_PERMISSIONS,
        bot_permissions: int = DEFAULT_BOT_PERMISSIONS,
        channels: Sequence[str] = (),
    ) -> FakeGuild:
        """A server the bot is in (GUILD_CREATE goes to a connected bot). Its @everyone role id is its id."""
        guild = FakeGuild(
            id=new_snowflake(),
            name=name,
            owner_id=self.owner_user.id,
            attachment_size_limit=attachment_size_limit,
            premium_tier=premium_tier,
        )
        guild.roles[guild.id] = FakeRole(
            id=guild.id, guild_id=guild.id, name="@everyone", permissions=everyone_permissions
        )
        bot_role = FakeRole(
            id=new_snowflake(),
            guild_id=guild.id,
            name=self.bot_user.username,
            permissions=bot_permissions,
            position=1,
            managed=True,
        )
        guild.roles[bot_role.id] = bot_role
        guild.members[self.owner_user.id] = FakeMember(user=self.owner_user, guild=guild)
        guild.members[self.bot_user.id] = FakeMember(user=self.bot_user, guild=guild, roles=[bot_role])
        self.guilds[guild.id] = guild
        for channel_name in channels:
            self._new_channel(guild, channel_name)
        self._soon(
            self.gateway.send_event(
                "GUILD_CREATE", lambda s: guild.to_create_payload(), guild_id=guild.id, intent=Intent.GUILDS
            )
        )
        return guild

    def _new_channel(self, guild: FakeGuild, name: str, *, type: int = ChannelType.GUILD_TEXT) -> FakeChannel:
        channel = FakeChannel(
            id=new_snowflake(), name=name, type=type, guild=guild, position=len(guild.channels)
        )
        guild.channels[channel.id] = channel
        self.channels[channel.id] = channel
        self._channel_messages[channel.id] = []
        return channel

    def add_channel(
        self,
        guild: FakeGuild,
        name: str,
        *,
        type: int = ChannelType.GUILD_TEXT,
        bot_denied: int = 0,
        everyone_denied: int = 0,
        allowed: Sequence[FakeMember | FakeRole] = (),
        allowed_permissions: int = Permission.VIEW_CHANNEL | Permission.READ_MESSAGE_HISTORY,
    ) -> FakeChannel:
        """A text channel; ``bot_denied`` permission bits are denied to the bot by a member overwrite.

        A private channel: ``everyone_denied=Permission.VIEW_CHANNEL`` and the members or roles in
        ``allowed`` (and the bot) let back in by overwrites granting ``allowed_permissions``.
        """
        channel = self._new_channel(guild, name, type=type)
        if everyone_denied:
            channel.overwrites.append((guild.id, 0, 0, everyone_denied))
            if allowed:  # a private channel the bot works in
                channel.overwrites.append((self.bot_user.id, 1, everyone_denied, 0))
        for who in allowed:
            kind = 0 if isinstance(who, FakeRole) else 1
            channel.overwrites.append((who.id, kind, allowed_permissions, 0))
        if bot_denied:
            channel.overwrites.append((self.bot_user.id, 1, 0, bot_denied))
        self._soon(
            self.gateway.send_event(
                "CHANNEL_CREATE", channel.to_payload(), guild_id=guild.id, intent=Intent.GUILDS
            )
        )
        return channel

    async def set_bot_denied(self, channel: FakeChannel, bot_denied: int) -> None:
        """What an admin does in a channel's Permissions: deny the bot these bits there (0 lifts the
        denial). CHANNEL_UPDATE tells the bot, as Discord does."""
        channel.overwrites[:] = [o for o in channel.overwrites if o[0] != self.bot_user.id or o[1] != 1]
        if bot_denied:
            channel.overwrites.append((self.bot_user.id, 1, 0, bot_denied))
        assert channel.guild is not None
        await self.gateway.send_event(
            "CHANNEL_UPDATE", channel.to_payload(), guild_id=channel.guild.id, intent=Intent.GUILDS
        )
        await self._notify_world()

    def add_role(self, guild: FakeGuild, name: str, permissions: int) -> FakeRole:
        role = FakeRole(
            id=new_snowflake(),
            guild_id=guild.id,
            name=name,
            permissions=permissions,
            position=len(guild.roles),
        )
        guild.roles[role.id] = role
        self._soon(
            self.gateway.send_event(
                "GUILD_ROLE_CREATE",
                {"guild_id": str(guild.id), "role": role.to_payload()},
                guild_id=guild.id,
                intent=Intent.GUILDS,
            )
        )
        return role

    def allow_command(self, guild: FakeGuild, command_name: str, who: FakeMember | FakeRole) -> None:
        """What a server admin does in Server Settings → Integrations: let a member or role use a
        command that its default_member_permissions would hide from them."""
        guild.command_overrides.setdefault(command_name, set()).add(who.id)

    def add_user(self, name: str) -> FakeUser:
        user = FakeUser(id=new_snowflake(), username=name)
        self.users[user.id] = user
        return user

    def add_member(
        self,
        guild: FakeGuild,
        name: str,
        *,
        permissions: int | None = None,
        roles: Sequence[FakeRole] = (),
        user: FakeUser | None = None,
        locale: str = "en-US",
    ) -> FakeMember:
        """A member of ``guild``. ``permissions`` adds a role granting exactly those bits (on top of @everyone)."""
        user = user or self.add_user(name)
        member_roles = list(roles)
        if permissions is not None:
            member_roles.append(self.add_role(guild, f"{name}-role", permissions))
        member = FakeMember(user=user, guild=guild, roles=member_roles, locale=locale)
        guild.members[user.id] = member
        self._soon(
            self.gateway.send_event(
                "GUILD_MEMBER_ADD",
                {**member.to_payload(), "guild_id": str(guild.id)},
                guild_id=guild.id,
                intent=Intent.GUILD_MEMBERS,
            )
        )
        return member

    def add_attachment(
        self,
        filename: str,
        data: bytes,
        *,
        content_type: str | None = None,
        description: str | None = None,
        duration_secs: float | None = None,
        waveform: str | None = None,
    ) -> FakeAttachment:
        """A file a member uploads (to use as a slash-command option or in ``post_user_message``); served by the CDN."""
        return self._make_attachment(
            "attachments", 0, filename, data, content_type, description, duration_secs, waveform
        )

    def _make_attachment(
        self,
        kind: str,
        bucket: int,
        filename: str,
        data: bytes,
        content_type: str | None,
        description: str | None = None,
        duration_secs: float | None = None,
        waveform: str | None = None,
    ) -> FakeAttachment:
        attachment_id = new_snowflake()
        clean_name = _sanitize_filename(filename)
        if content_type is None:
            content_type = mimetypes.guess_type(clean_name)[0]
            if content_type is None and clean_name.lower().endswith(".ogg"):
                content_type = "audio/ogg"
        path = f"/{kind}/{bucket or attachment_id >> 22}/{attachment_id}/{quote(clean_name)}"
        expires = int(time.time()) + 86_400
        signature = f"?ex={expires:x}&is={int(time.time()):x}&hm={secrets.token_hex(32)}&"
        attachment = FakeAttachment(
            id=attachment_id,
            filename=clean_name,
            data=bytes(data),
            content_type=content_type,
            url=f"{self.cdn_base}{path}{signature}",
            proxy_url=f"{self.media_base}{path}{signature}",
            description=description,
            duration_secs=duration_secs,
            waveform=waveform,
        )
        self.attachments[path] = attachment
        return attachment

    # ======================================================================================
    # looking at the world
    # ======================================================================================
    def messages(self, channel: FakeChannel, *, include_ephemeral: bool = False) -> list[FakeMessage]:
        """The channel's visible history, oldest first (ephemeral messages only on request)."""
        found = [m for m in self._channel_messages.get(channel.id, []) if not m.deleted]
        if include_ephemeral:
            found += [
                m
                for i in self.interactions.values()
                if i.channel is channel
                for m in i.messages
                if m.is_ephemeral and not m.deleted
            ]
            found.sort(key=lambda m: m.id)
        return found

    def bot_messages(self, channel: FakeChannel) -> list[FakeMessage]:
        return [m for m in self.messages(channel) if m.author is self.bot_user]

    def registered_commands(self, guild: FakeGuild | None = None) -> list[dict[str, Any]]:
        """The commands the bot registered globally (``guild=None``) or for ``guild``, as Discord stores them."""
        stored = self.commands.get(guild.id if guild else None, {})
        return [c.to_payload() for c in stored.values()]

    def command_create_count(self, guild: FakeGuild | None = None) -> int:
        """How many commands were created (new names) today globally or in ``guild``."""
        return self._command_creates.get((guild.id if guild else None, self._day()), 0)

    def requests_to(self, method: str, route: str) -> list[RequestRecord]:
        """Logged requests matching a route template such as ``/channels/{channel_id}/messages``."""
        return [r for r in self.requests if r.method == method and r.route == route]

    @property
    def bot_mention(self) -> str:
        return self.bot_user.mention

    async def _notify_world(self) -> None:
        async with self._world_changed:
            self._world_changed.notify_all()

    async def wait_for_message(
        self,
        channel: FakeChannel | None = None,
        predicate: Callable[[FakeMessage], bool] | None = None,
        timeout: float = 10.0,
        *,
        include_existing: bool = True,
        include_ephemeral: bool = False,
    ) -> FakeMessage:
        """Wait for a message (created or edited into shape) in ``channel`` satisfying ``predicate``."""
        baseline = {m.id: m.edit_count for m in self.messages_by_id.values()} if not include_existing else {}

        def candidates() -> list[FakeMessage]:
            return [
                m
                for m in self.messages_by_id.values()
                if not m.deleted
                and (channel is None or m.channel is channel)
                and (include_ephemeral or not m.is_ephemeral)
                and (m.id not in baseline or m.edit_count > baseline[m.id])
                and (predicate is None or predicate(m))
            ]

        async def waiter() -> FakeMessage:
            async with self._world_changed:
                await self._world_changed.wait_for(lambda: bool(candidates()))
                return candidates()[0]

        try:
            return await asyncio.wait_for(waiter(), timeout)
        except TimeoutError:
            seen = [m.text for m in self.messages_by_id.values() if channel is None or m.channel is channel]
            raise TimeoutError(f"no matching message within {timeout}s; messages seen: {seen!r}") from None

    async def wait_until_connected(self, timeout: float = 10.0) -> None:
        """Wait until every shard the bot identified is connected (e.g. after a drop)."""
        await self.gateway.wait_until(
            lambda: (
                bool(self.gateway.live_sessions())
                and all(s.socket is not None for s in self.gateway.live_sessions())
            ),
            timeout,
        )

    # ======================================================================================
    # gateway controls
    # ======================================================================================
    async def drop_gateway(
        self, code: int = 4000, *, wait_for_resume: bool = True, timeout: float = 15.0
    ) -> None:
        """Drop the bot's gateway connection(s); by default wait until it RESUMEs."""
        before = self.gateway.resume_count
        dropped = await self.gateway.drop(code)
        if wait_for_resume and dropped:
            await self.gateway.wait_until(lambda: self.gateway.resume_count >= before + len(dropped), timeout)

    async def request_reconnect(self) -> None:
        await self.gateway.send_reconnect()

    async def invalidate_sessions(self, *, resumable: bool = False) -> None:
        await self.gateway.invalidate(resumable=resumable)

    async def dispatch(
        self, event: str, data: Any, *, guild: FakeGuild | None = None, intent: int | None = None
    ) -> int:
        """Send any gateway event to the bot (escape hatch)."""
        return await self.gateway.send_event(event, data, guild_id=guild.id if guild else None, intent=intent)

    def inject_rate_limit(
        self,
        method: str = "*",
        path: str = "*",
        *,
        retry_after: float = 0.05,
        is_global: bool = False,
        times: int = 1,
        scope: str = "user",
    ) -> InjectedFault:
        """Answer the next ``times`` requests matching ``method`` and glob ``path`` (e.g. ``/channels/*/messages``) with 429."""
        return self.faults.add(
            InjectedFault(
                FaultKind.RATE_LIMIT,
                method.upper(),
                path,
                times,
                retry_after=retry_after,
                is_global=is_global,
                scope="global" if is_global else scope,
            )
        )

    def inject_server_error(
        self, method: str = "*", path: str = "*", *, status: int = 502, times: int = 1
    ) -> InjectedFault:
        """Answer the next ``times`` matching requests with a 5xx (Discord's JSON body)."""
        return self.faults.add(
            InjectedFault(FaultKind.SERVER_ERROR, method.upper(), path, times, status=status)
        )

    def inject_connection_drop(
        self, method: str = "*", path: str = "*", *, times: int = 1, after_handling: bool = False
    ) -> InjectedFault:
        """Reset the connection of the next ``times`` matching requests (the bot sees errno 104).

        By default the reset comes mid-upload, before Discord acted; ``after_handling=True`` lets the
        request take effect and loses only the answer.
        """
        kind = FaultKind.DROP_AFTER if after_handling else FaultKind.DROP
        return self.faults.add(InjectedFault(kind, method.upper(), path, times))

    def inject_hang(
        self,
        method: str = "*",
        path: str = "*",
        *,
        times: int = 1,
        after_handling: bool = False,
        hold_s: float = 60.0,
    ) -> InjectedFault:
        """Give the next ``times`` matching requests no answer until ``fault.release()`` (or ``hold_s``).

        By default Discord does not act on them; ``after_handling=True`` lets the request take effect
        and holds only the answer. Released requests end with a reset connection.
        """
        kind = FaultKind.HANG_AFTER if after_handling else FaultKind.HANG
        return self.faults.add(InjectedFault(kind, method.upper(), path, times, hold_s=hold_s))

    def invalid_requests_within(self, seconds: float = 600.0) -> int:
        """401/403/429 answers in the last ``seconds`` of the fake clock, as Discord counts them for its
        IP ban (10,000 in 10 minutes); 429s of the ``shared`` scope do not count."""
        since = self.clock() - seconds
        return sum(at >= since for at in self._invalid_request_times)

    def _soon(self, coroutine: Awaitable[Any]) -> None:
        """Run a gateway send from sync test-setup code (no-op if nobody is connected)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            coroutine.close()  # type: ignore[attr-defined]
            return
        task: asyncio.Task[Any] = loop.create_task(coroutine)  # type: ignore[arg-type]
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ======================================================================================
    # member actions (what a person does in the Discord client)
    # ======================================================================================
    def _find_command(
        self, guild: FakeGuild | None, name: str, command_type: int
    ) -> RegisteredCommand | None:
        scopes = ([guild.id] if guild else []) + [None]
        for scope in scopes:
            command = self.commands.get(scope, {}).get((name, command_type))
            if command is not None:
                return command
        return None

    def _require_connected(self, guild: FakeGuild | None) -> None:
        if not any(s.covers_guild(guild.id if guild else None) for s in self.gateway.connected_sessions()):
            raise RuntimeError("the bot is not connected to the fake gateway (for this guild's shard)")

    def _check_can_use(self, command: RegisteredCommand, member: FakeMember, channel: FakeChannel) -> None:
        if channel.guild is not member.guild:
            raise FakeDiscordValidationError(
                f"#{channel.name} is not in {member.name}'s server {member.guild.name!r}"
            )
        if not member_can_see(command, member):
            raise FakeDiscordValidationError(
                f"{member.name} cannot see /{command.name}: it needs permissions {command.payload.get('default_member_permissions')}"
            )
        contexts = command.payload.get("contexts")
        if contexts is not None and 0 not in contexts:
            raise FakeDiscordValidationError(
                f"/{command.name} is not usable in servers (contexts={contexts})"
            )
        if not channel.permissions_for(member) & Permission.USE_APPLICATION_COMMANDS:
            raise FakeDiscordValidationError(
                f"{member.name} may not use application commands in #{channel.name}"
            )

    async def invoke_slash_command(
        self,
        member: FakeMember,
        channel: FakeChannel,
        name: str,
        options: dict[str, Any] | None = None,
    ) -> FakeInteraction:
        """Run ``/name`` as ``member`` in ``channel`` with ``options``, validated as the Discord client does.

        ``name`` may include sub-commands ("queue show"). Values: str, int, float, bool, FakeMember/FakeUser,
        FakeChannel, FakeRole, FakeAttachment (from ``add_attachment``); a choice may be given by value or name.
        Raises FakeDiscordValidationError when the client would refuse to send it.
        """
        command_name, *path = name.strip().lstrip("/").split()
        guild = member.guild
        command = self._find_command(guild, command_name, CommandType.CHAT_INPUT)
        if command is None:
            known = sorted(
                n
                for scope in (guild.id, None)
                for (n, t) in self.commands.get(scope, {})
                if t == CommandType.CHAT_INPUT
            )
            raise FakeDiscordValidationError(
                f"no slash command /{command_name} is registered (registered: {known})"
            )
        self._check_can_use(command, member, channel)
        built = build_invocation(
            command,
            path,
            dict(options or {}),
            guild_members=guild.members,
            channel_permissions=lambda c: c.permissions_for(member),
            attachment_size_limit=guild.attachment_size_limit,
        )
        for attachment in built.attachments:
            attachment.ephemeral = True
            built.resolved["attachments"][str(attachment.id)] = attachment.to_payload()
        data: dict[str, Any] = {"id": str(command.id), "name": command.name, "type": CommandType.CHAT_INPUT}
        if built.options:
            data["options"] = built.options
        if built.resolved:
            data["resolved"] = built.resolved
        if command.guild_id is not None:
            data["guild_id"] = str(command.guild_id)
        return await self._send_interaction(
            InteractionType.APPLICATION_COMMAND,
            member,
            channel,
            data,
            command_name=" ".join([command_name, *path]),
            command_type=CommandType.CHAT_INPUT,
        )

    async def invoke_message_command(
        self, member: FakeMember, message: FakeMessage, name: str
    ) -> FakeInteraction:
        """Run the message context-menu command ``name`` on ``message`` (Apps > name)."""
        guild = member.guild
        command = self._find_command(guild, name, CommandType.MESSAGE)
        if command is None:
            raise FakeDiscordValidationError(f"no message command {name!r} is registered")
        if message.is_ephemeral or message.deleted:
            raise FakeDiscordValidationError("that message cannot be targeted")
        self._check_can_use(command, member, message.channel)
        data: dict[str, Any] = {
            "id": str(command.id),
            "name": command.name,
            "type": CommandType.MESSAGE,
            "target_id": str(message.id),
            # The target of a message command always carries its content, even without the content intent
            # (the message it replies to is blanked by its own rules).
            "resolved": {"messages": {str(message.id): self._command_target_payload(message)}},
        }
        if command.guild_id is not None:
            data["guild_id"] = str(command.guild_id)
        return await self._send_interaction(
            InteractionType.APPLICATION_COMMAND,
            member,
            message.channel,
            data,
            command_name=name,
            command_type=CommandType.MESSAGE,
        )

    def _command_target_payload(self, message: FakeMessage) -> dict[str, Any]:
        payload = message.to_payload()
        if message.reference is not None and "referenced_message" in payload:
            payload["referenced_message"] = message.reference.to_payload(
                strip_content=self._rest_hides_content(message.reference), include_reference=False
            )
        return payload

    async def submit_modal(
        self, member: FakeMember, opened_by: FakeInteraction, values: dict[str, str]
    ) -> FakeInteraction:
        """``member`` fills in and submits the modal the bot opened in answer to ``opened_by``.

        ``values`` maps text-input custom ids to what the member typed; inputs left out keep the
        bot's pre-filled value. Refused like the Discord client: a required input left empty, a value
        outside min_length/max_length, an unknown input.
        """
        modal = opened_by.modal
        if modal is None:
            raise FakeDiscordValidationError("the bot did not answer that interaction with a modal")
        if member.user is not opened_by.user:
            raise FakeDiscordValidationError("only the member who opened a modal can submit it")
        inputs = modal_text_inputs(modal)
        unknown = set(values) - {text_input["custom_id"] for text_input in inputs}
        if unknown:
            raise FakeDiscordValidationError(f"the modal has no text input(s) {sorted(unknown)}")
        rows = []
        for text_input in inputs:
            value = values.get(text_input["custom_id"], text_input.get("value", ""))
            if text_input.get("required", True) and not value:
                raise FakeDiscordValidationError(f"{text_input['label']!r} is required")
            if value and not text_input.get("min_length", 0) <= len(value) <= text_input.get(
                "max_length", 4000
            ):
                raise FakeDiscordValidationError(f"{text_input['label']!r} is outside its length limits")
            rows.append(
                {"type": 1, "components": [{"type": 4, "custom_id": text_input["custom_id"], "value": value}]}
            )
        data = {"custom_id": modal["custom_id"], "components": rows}
        return await self._send_interaction(
            InteractionType.MODAL_SUBMIT,
            member,
            opened_by.channel,
            data,
            source_message=opened_by.source_message,
        )

    async def invoke_user_command(
        self, member: FakeMember, target: FakeMember, name: str, channel: FakeChannel
    ) -> FakeInteraction:
        """Run the user context-menu command ``name`` on ``target``."""
        command = self._find_command(member.guild, name, CommandType.USER)
        if command is None:
            raise FakeDiscordValidationError(f"no user command {name!r} is registered")
        self._check_can_use(command, member, channel)
        data: dict[str, Any] = {
            "id": str(command.id),
            "name": command.name,
            "type": CommandType.USER,
            "target_id": str(target.id),
            "resolved": {
                "users": {str(target.id): target.user.to_payload()},
                "members": {
                    str(target.id): target.to_payload(with_user=False, with_permissions=target.permissions)
                },
            },
        }
        if command.guild_id is not None:
            data["guild_id"] = str(command.guild_id)
        return await self._send_interaction(
            InteractionType.APPLICATION_COMMAND,
            member,
            channel,
            data,
            command_name=name,
            command_type=CommandType.USER,
        )

    async def click_button(self, member: FakeMember, message: FakeMessage, custom_id: str) -> FakeInteraction:
        """Click the button ``custom_id`` on ``message`` (a component interaction)."""
        button = next((b for b in message.buttons() if b.get("custom_id") == custom_id), None)
        if button is None:
            raise FakeDiscordValidationError(
                f"message {message.id} has no button {custom_id!r} (buttons: {[b.get('custom_id') for b in message.buttons()]})"
            )
        if button.get("disabled"):
            raise FakeDiscordValidationError(f"button {custom_id!r} is disabled")
        data = {"custom_id": custom_id, "component_type": 2}
        return await self._send_interaction(
            InteractionType.MESSAGE_COMPONENT, member, message.channel, data, source_message=message
        )

    async def _send_interaction(
        self,
        interaction_type: int,
        member: FakeMember,
        channel: FakeChannel,
        data: dict[str, Any],
        *,
        command_name: str | None = None,
        command_type: int | None = None,
        source_message: FakeMessage | None = None,
    ) -> FakeInteraction:
        guild = member.guild
        self._require_connected(guild)
        interaction_id = new_snowflake()
        token = "aW50ZXJhY3Rpb24" + secrets.token_urlsafe(96)
        bot_member = guild.members[self.bot_user.id]
        channel_payload = channel.to_payload()
        channel_payload["permissions"] = str(channel.permissions_for(member))
        payload: dict[str, Any] = {
            "id": str(interaction_id),
            "application_id": str(self.application_id),
            "type": interaction_type,
            "data": data,
            "guild_id": str(guild.id),
            "guild": {"id": str(guild.id), "locale": guild.preferred_locale, "features": []},
            "channel_id": str(channel.id),
            "channel": channel_payload,
            "member": member.to_payload(with_permissions=channel.permissions_for(member)),
            "token": token,
            "version": 1,
            "app_permissions": str(channel.permissions_for(bot_member)),
            "locale": member.locale,
            "guild_locale": guild.preferred_locale,
            "entitlements": [],
            "entitlement_sku_ids": [],
            "authorizing_integration_owners": {"0": str(guild.id)},
            "context": 0,
            "attachment_size_limit": guild.attachment_size_limit,
        }
        if source_message is not None:
            payload["message"] = source_message.to_payload()
        interaction = FakeInteraction(
            id=interaction_id,
            token=token,
            type=interaction_type,
            application_id=self.application_id,
            user=member.user,
            member=member,
            guild=guild,
            channel=channel,
            payload=payload,
            created_at=self.clock(),
            command_name=command_name,
            command_type=command_type,
            attachment_size_limit=guild.attachment_size_limit,
            source_message=source_message,
        )
        self.interactions[interaction_id] = interaction
        self._interactions_by_token[token] = interaction
        await self.gateway.send_event("INTERACTION_CREATE", payload, guild_id=guild.id, intent=None)
        return interaction

    async def post_user_message(
        self,
        member: FakeMember,
        channel: FakeChannel,
        content: str = "",
        *,
        attachments: Sequence[FakeAttachment] = (),
        reply_to: FakeMessage | None = None,
        mention_author: bool = True,
        voice_message: bool = False,
    ) -> FakeMessage:
        """``member`` posts a message (MESSAGE_CREATE to the bot). ``reply_to`` makes it a reply that pings its
        author unless ``mention_author=False``. ``voice_message`` posts the single attachment as a voice message."""
        if channel.guild is not member.guild:
            raise FakeDiscordValidationError(
                f"#{channel.name} is not in {member.name}'s server {member.guild.name!r}"
            )
        needed = Permission.SEND_MESSAGES_IN_THREADS if channel.is_thread else Permission.SEND_MESSAGES
        if not channel.permissions_for(member) & needed:
            raise FakeDiscordValidationError(f"{member.name} may not send messages in #{channel.name}")
        locked = channel.is_thread and channel.archived and channel.locked
        if locked and not channel.permissions_for(member) & Permission.MANAGE_THREADS:
            raise FakeDiscordValidationError(f"#{channel.name} is locked: only moderators may post")
        flags = 0
        if voice_message:
            if len(attachments) != 1:
                raise FakeDiscordValidationError("a voice message has exactly one attachment")
            flags |= MessageFlag.IS_VOICE_MESSAGE
            attachment = attachments[0]
            if attachment.duration_secs is None:
                attachment.duration_secs = 1.0
            if attachment.waveform is None:
                attachment.waveform = base64.b64encode(bytes(range(0, 256, 4))).decode()
        for attachment in attachments:
            if attachment.size > member.guild.attachment_size_limit:
                raise FakeDiscordValidationError(f"{attachment.filename} is over this server's upload limit")
        if len(content) > Limit.CONTENT_CHARS:
            raise FakeDiscordValidationError("a message is at most 2000 characters")
        if not content and not attachments:
            raise FakeDiscordValidationError("cannot send an empty message")
        message = FakeMessage(
            id=new_snowflake(),
            channel=channel,
            author=member.user,
            content=content,
            attachments=list(attachments),
            flags=flags,
            type=MessageType.REPLY if reply_to else MessageType.DEFAULT,
            reference=reply_to,
        )
        message.mentions = self._resolve_mentions(
            message,
            None if mention_author else {"parse": ["users", "roles", "everyone"], "replied_user": False},
        )
        if channel.is_thread and channel.archived:
            # Sending a message in an archived thread unarchives it.
            channel.archived = False
            await self._announce_thread_update(channel)
        await self._store_and_announce(message)
        return message

    async def add_reaction(self, member: FakeMember, message: FakeMessage, emoji: str) -> None:
        """``member`` reacts to ``message`` with a unicode ``emoji``."""
        message.reactions.setdefault(emoji, set()).add(member.id)
        await self._announce_reaction("MESSAGE_REACTION_ADD", message, member.user, emoji)

    # ======================================================================================
    # message plumbing
    # ======================================================================================
    def _resolve_mentions(
        self, message: FakeMessage, allowed_mentions: dict[str, Any] | None
    ) -> list[FakeUser]:
        """Who a message pings, honouring ``allowed_mentions`` like Discord."""
        parse_all = allowed_mentions is None
        parse = set((allowed_mentions or {}).get("parse", []))
        allowed_users = {int(x) for x in (allowed_mentions or {}).get("users", [])}
        mentioned: list[FakeUser] = []
        for raw_id in _MENTION.findall(message.content):
            user = self.users.get(int(raw_id))
            if user is None or user in mentioned:
                continue
            if parse_all or "users" in parse or user.id in allowed_users:
                mentioned.append(user)
        if message.reference is not None and message.reference.author not in mentioned:
            replied_user = True if parse_all else bool((allowed_mentions or {}).get("replied_user", False))
            if replied_user:
                mentioned.append(message.reference.author)
        message.mention_everyone = "@everyone" in message.content and (parse_all or "everyone" in parse)
        message.allowed_mentions = allowed_mentions
        return mentioned

    def _event_payload(self, message: FakeMessage, session: GatewaySession) -> dict[str, Any]:
        """MESSAGE_CREATE/UPDATE data as this session sees it (content blanked without the content intent)."""
        strip = self._content_hidden(message, session)
        payload = message.to_payload(strip_content=strip)
        if message.reference is not None and "referenced_message" in payload:
            payload["referenced_message"] = message.reference.to_payload(
                strip_content=self._content_hidden(message.reference, session), include_reference=False
            )
        guild = message.channel.guild
        if guild is not None and message.author.id in guild.members and message.webhook_id is None:
            payload["member"] = guild.members[message.author.id].to_payload(with_user=False)
        for user_payload in payload["mentions"]:
            if guild is not None and int(user_payload["id"]) in guild.members:
                user_payload["member"] = guild.members[int(user_payload["id"])].to_payload(with_user=False)
        return payload

    def _content_hidden(self, message: FakeMessage, session: GatewaySession) -> bool:
        if session.has_intent(Intent.MESSAGE_CONTENT):
            return False
        if message.author is self.bot_user or message.channel.type == ChannelType.DM:
            return False
        return self.bot_user not in message.mentions

    async def _store_and_announce(self, message: FakeMessage) -> None:
        self.messages_by_id[message.id] = message
        if not message.is_ephemeral:
            self._channel_messages.setdefault(message.channel.id, []).append(message)
            await self._announce_message("MESSAGE_CREATE", message)
        await self._notify_world()

    async def _announce_message(self, event: str, message: FakeMessage) -> None:
        if message.is_ephemeral:
            return  # the bot never receives ephemeral messages
        guild = message.channel.guild
        intent = Intent.GUILD_MESSAGES if guild is not None else Intent.DIRECT_MESSAGES
        await self.gateway.send_event(
            event,
            lambda session: self._event_payload(message, session),
            guild_id=guild.id if guild else None,
            intent=intent,
        )

    async def _announce_update(self, message: FakeMessage) -> None:
        await self._announce_message("MESSAGE_UPDATE", message)
        await self._notify_world()

    async def _announce_delete(self, message: FakeMessage) -> None:
        if not message.is_ephemeral:
            guild = message.channel.guild
            data: dict[str, Any] = {"id": str(message.id), "channel_id": str(message.channel.id)}
            if guild is not None:
                data["guild_id"] = str(guild.id)
            await self.gateway.send_event(
                "MESSAGE_DELETE",
                data,
                guild_id=guild.id if guild else None,
                intent=Intent.GUILD_MESSAGES if guild else Intent.DIRECT_MESSAGES,
            )
        await self._notify_world()

    async def _announce_reaction(self, event: str, message: FakeMessage, user: FakeUser, emoji: str) -> None:
        guild = message.channel.guild
        data: dict[str, Any] = {
            "user_id": str(user.id),
            "channel_id": str(message.channel.id),
            "message_id": str(message.id),
            "emoji": {"id": None, "name": emoji},
            "burst": False,
            "type": 0,
        }
        if guild is not None:
            data["guild_id"] = str(guild.id)
            if event == "MESSAGE_REACTION_ADD" and user.id in guild.members:
                data["member"] = guild.members[user.id].to_payload()
                data["message_author_id"] = str(message.author.id)
        await self.gateway.send_event(
            event,
            data,
            guild_id=guild.id if guild else None,
            intent=Intent.GUILD_MESSAGE_REACTIONS if guild else Intent.DIRECT_MESSAGE_REACTIONS,
        )
        await self._notify_world()

    def _validate_message_payload(
        self, payload: dict[str, Any], uploads: list[Upload], *, creating: bool
    ) -> None:
        content = payload.get("content")
        if content is not None and not isinstance(content, str):
            content = str(content)
        if content is not None and len(content) > Limit.CONTENT_CHARS:
            raise form_error("content", "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length.")
        embeds = payload.get("embeds") or []
        if len(embeds) > Limit.EMBEDS_PER_MESSAGE:
            raise form_error("embeds", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
        total = 0
        for index, embed in enumerate(embeds):
            limits = {
                "title": Limit.EMBED_TITLE,
                "description": Limit.EMBED_DESCRIPTION,
            }
            for key, limit in limits.items():
                value = embed.get(key) or ""
                total += len(value)
                if len(value) > limit:
                    raise form_error(
                        f"embeds.{index}.{key}",
                        "BASE_TYPE_MAX_LENGTH",
                        f"Must be {limit} or fewer in length.",
                    )
            fields = embed.get("fields") or []
            if len(fields) > Limit.EMBED_FIELDS:
                raise form_error(
                    f"embeds.{index}.fields", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."
                )
            for field_index, embed_field in enumerate(fields):
                name, value = embed_field.get("name") or "", embed_field.get("value") or ""
                if not name or len(name) > Limit.EMBED_FIELD_NAME:
                    raise form_error(
                        f"embeds.{index}.fields.{field_index}.name",
                        "BASE_TYPE_BAD_LENGTH",
                        "Must be between 1 and 256 in length.",
                    )
                if not value or len(value) > Limit.EMBED_FIELD_VALUE:
                    raise form_error(
                        f"embeds.{index}.fields.{field_index}.value",
                        "BASE_TYPE_BAD_LENGTH",
                        "Must be between 1 and 1024 in length.",
                    )
                total += len(name) + len(value)
            footer = (embed.get("footer") or {}).get("text") or ""
            if len(footer) > Limit.EMBED_FOOTER:
                raise form_error(
                    f"embeds.{index}.footer.text", "BASE_TYPE_MAX_LENGTH", "Must be 2048 or fewer in length."
                )
            author = (embed.get("author") or {}).get("name") or ""
            if len(author) > Limit.EMBED_AUTHOR_NAME:
                raise form_error(
                    f"embeds.{index}.author.name", "BASE_TYPE_MAX_LENGTH", "Must be 256 or fewer in length."
                )
            total += len(footer) + len(author)
        if total > Limit.EMBED_TOTAL:
            raise form_error("embeds", "MAX_EMBED_SIZE_EXCEEDED", "Embed size exceeds maximum size of 6000")
        components = payload.get("components") or []
        if not (payload.get("flags") or 0) & MessageFlag.IS_COMPONENTS_V2:
            if len(components) > Limit.ACTION_ROWS:
                raise form_error("components", "BASE_TYPE_MAX_LENGTH", "Must be 5 or fewer in length.")
            for row_index, row in enumerate(components):
                if row.get("type") != 1:
                    raise form_error(
                        f"components.{row_index}.type",
                        "UNION_TYPE_CHOICES",
                        "Top-level components must be action rows.",
                    )
                if not 1 <= len(row.get("components") or []) <= Limit.COMPONENTS_PER_ROW:
                    raise form_error(
                        f"components.{row_index}.components",
                        "BASE_TYPE_BAD_LENGTH",
                        "Must be between 1 and 5 in length.",
                    )
            validate_buttons(components)
        if len(uploads) > Limit.FILES_PER_MESSAGE:
            raise form_error("files", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
        if creating and not (
            content or embeds or uploads or components or payload.get("sticker_ids") or payload.get("poll")
        ):
            raise DiscordHTTPError(400, ErrorCode.CANNOT_SEND_EMPTY_MESSAGE, "Cannot send an empty message")

    def _attachments_from(
        self, message: FakeMessage, body: RequestBody, *, editing: bool
    ) -> list[FakeAttachment]:
        """Map ``attachments`` entries and ``files[n]`` uploads to attachments (Discord v10 semantics)."""
        uploads_by_index = {u.field_index: u for u in body.uploads}
        described = body.payload.get("attachments")
        channel_id = message.channel.id
        result: list[FakeAttachment] = []
        used: set[int] = set()
        if described is None:
            result = list(message.attachments) if editing else []
        else:
            existing = {a.id: a for a in message.attachments}
            for entry in described:
                entry_id = int(entry.get("id", -1))
                if entry_id in existing:
                    result.append(existing[entry_id])
                elif entry_id in uploads_by_index:
                    upload = uploads_by_index[entry_id]
                    used.add(entry_id)
                    result.append(
                        self._make_attachment(
                            "attachments",
                            channel_id,
                            entry.get("filename") or upload.filename,
                            upload.data,
                            None,
                            description=entry.get("description"),
                            duration_secs=entry.get("duration_secs"),
                            waveform=entry.get("waveform"),
                        )
                    )
                else:
                    raise form_error("attachments", "ATTACHMENT_NOT_FOUND", f"Unknown attachment {entry_id}")
        for upload in body.uploads:
            if upload.field_index not in used:
                result.append(
                    self._make_attachment("attachments", channel_id, upload.filename, upload.data, None)
                )
        if len(result) > Limit.FILES_PER_MESSAGE:
            raise form_error("attachments", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
        return result

    def _apply_body(
        self, message: FakeMessage, body: RequestBody, *, editing: bool, allow_ephemeral: bool
    ) -> None:
        payload = body.payload
        self._validate_message_payload(payload, body.uploads, creating=not editing)
        if editing:
            message.history.append(message.snapshot())
            message.edited_timestamp = iso_timestamp()
        if "content" in payload or not editing:
            message.content = "" if payload.get("content") is None else str(payload["content"])
        if "embeds" in payload or not editing:
            message.embeds = [{"type": "rich", **embed} for embed in (payload.get("embeds") or [])]
        if "components" in payload or not editing:
            message.components = list(payload.get("components") or [])
        message.attachments = self._attachments_from(message, body, editing=editing)
        message.embeds = [_resolve_attachment_urls(embed, message.attachments) for embed in message.embeds]
        flags = payload.get("flags")
        if flags is not None:
            settable = MessageFlag.SETTABLE | (
                MessageFlag.EPHEMERAL if allow_ephemeral and not editing else 0
            )
            if editing:
                message.flags = (message.flags & ~MessageFlag.SUPPRESS_EMBEDS) | (
                    int(flags) & MessageFlag.SUPPRESS_EMBEDS
                )
            else:
                message.flags |= int(flags) & settable
        if not editing:
            message.tts = bool(payload.get("tts", False))
            message.nonce = payload.get("nonce")
        if "content" in payload or "allowed_mentions" in payload or not editing:
            message.mentions = self._resolve_mentions(message, payload.get("allowed_mentions"))

    # ======================================================================================
    # REST routing
    # ======================================================================================
    def _route(
        self,
        method: str,
        template: str,
        handler: Handler,
        *,
        auth: bool = True,
        limit: tuple[int, float] | None = (50, 1.0),
        major: str | None = None,
    ) -> None:
        pattern = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$")
        self._routes.append(_Route(method, template, pattern, handler, auth, limit, major))

    def _register_routes(self) -> None:
        r = self._route
        r("GET", "/users/@me", self._get_me)
        r("GET", "/users/{user_id}", self._get_user)
        r("POST", "/users/@me/channels", self._create_dm)
        r("GET", "/gateway", self._get_gateway, auth=False)
        r("GET", "/gateway/bot", self._get_gateway_bot)
        r("GET", "/oauth2/applications/@me", self._get_application)
        r("GET", "/applications/@me", self._get_application)
        r("GET", "/applications/{application_id}/emojis", self._list_app_emojis)
        for prefix in (
            "/applications/{application_id}/commands",
            "/applications/{application_id}/guilds/{guild_id}/commands",
        ):
            r("GET", prefix, self._list_commands, major="guild_id")
            r("PUT", prefix, self._bulk_overwrite_commands, major="guild_id")
            r("POST", prefix, self._create_command, major="guild_id")
            r("GET", prefix + "/{command_id}", self._get_command, major="guild_id")
            r("PATCH", prefix + "/{command_id}", self._edit_command, major="guild_id")
            r("DELETE", prefix + "/{command_id}", self._delete_command, major="guild_id")
        r(
            "GET",
            "/applications/{application_id}/guilds/{guild_id}/commands/permissions",
            self._command_permissions,
        )
        r(
            "POST",
            "/interactions/{interaction_id}/{token}/callback",
            self._interaction_callback,
            auth=False,
            limit=None,
        )
        r(
            "POST",
            "/webhooks/{application_id}/{token}",
            self._webhook_execute,
            auth=False,
            limit=(5, 2.0),
            major="token",
        )
        r(
            "GET",
            "/webhooks/{application_id}/{token}/messages/{message_id}",
            self._webhook_get_message,
            auth=False,
            limit=(5, 2.0),
            major="token",
        )
        r(
            "PATCH",
            "/webhooks/{application_id}/{token}/messages/{message_id}",
            self._webhook_edit_message,
            auth=False,
            limit=(5, 2.0),
            major="token",
        )
        r(
            "DELETE",
            "/webhooks/{application_id}/{token}/messages/{message_id}",
            self._webhook_delete_message,
            auth=False,
            limit=(5, 2.0),
            major="token",
        )
        r("GET", "/channels/{channel_id}", self._get_channel, major="channel_id")
        r("GET", "/channels/{channel_id}/messages", self._list_messages, major="channel_id")
        r("POST", "/channels/{channel_id}/messages", self._create_message, limit=(5, 5.0), major="channel_id")
        r("GET", "/channels/{channel_id}/messages/{message_id}", self._get_message, major="channel_id")
        r(
            "PATCH",
            "/channels/{channel_id}/messages/{message_id}",
            self._edit_message,
            limit=(5, 5.0),
            major="channel_id",
        )
        r(
            "DELETE",
            "/channels/{channel_id}/messages/{message_id}",
            self._delete_message,
            limit=(5, 1.0),
            major="channel_id",
        )
        r("POST", "/channels/{channel_id}/typing", self._typing, major="channel_id")
        r(
            "PUT",
            "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me",
            self._add_own_reaction,
            limit=(1, 0.25),
            major="channel_id",
        )
        r(
            "DELETE",
            "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me",
            self._remove_own_reaction,
            limit=(1, 0.25),
            major="channel_id",
        )
        r(
            "POST",
            "/channels/{channel_id}/messages/{message_id}/threads",
            self._thread_from_message,
            major="channel_id",
        )
        r("POST", "/channels/{channel_id}/threads", self._thread_without_message, major="channel_id")
        r("PATCH", "/channels/{channel_id}", self._edit_channel, major="channel_id")
        r("GET", "/guilds/{guild_id}", self._get_guild, major="guild_id")
        r("GET", "/guilds/{guild_id}/channels", self._get_guild_channels, major="guild_id")
        r("GET", "/guilds/{guild_id}/roles", self._get_guild_roles, major="guild_id")
        r("GET", "/guilds/{guild_id}/members/{user_id}", self._get_member, major="guild_id")

    async def _dispatch_rest(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        match = re.match(r"^/api(?:/v\d+)?(/.*)$", path)
        if match is None:
            return self._unhandled(request)
        api_path = match.group(1)
        for route in self._routes:
            if route.method != request.method:
                continue
            found = route.pattern.match(api_path)
            if found is None:
                continue
            context = RequestContext(request, found.groupdict(), route.template)
            fault = self.faults.take(request.method, api_path)
            if fault is not None and fault.kind in (FaultKind.DROP, FaultKind.HANG):
                if fault.kind is FaultKind.HANG:
                    await fault.hold()
                await reset_connection(request)
                self._record(request, api_path, route, 0, context.payload, dropped=True)
                return web.Response(status=500)  # never sent: the connection is gone
            response = await self._run_route(route, context, api_path, fault)
            dropped = fault is not None and fault.kind in (FaultKind.DROP_AFTER, FaultKind.HANG_AFTER)
            if dropped:
                if fault is not None and fault.kind is FaultKind.HANG_AFTER:
                    await fault.hold()
                await reset_connection(request)
            self._record(request, api_path, route, response.status, context.payload, dropped=dropped)
            if response.status in (401, 403, 429) and response.headers.get("X-RateLimit-Scope") != "shared":
                self.invalid_request_count += 1
                self._invalid_request_times.append(self.clock())
            return response
        return self._unhandled(request)

    def _record(
        self,
        request: web.Request,
        api_path: str,
        route: _Route,
        status: int,
        payload: dict[str, Any] | None,
        *,
        dropped: bool,
    ) -> None:
        self.requests.append(
            RequestRecord(request.method, api_path, route.template, status, self.clock(), payload, dropped)
        )

    def _unhandled(self, request: web.Request) -> web.Response:
        entry = f"{request.method} {request.path_qs}"
        self.unhandled_requests.append(entry)
        self.requests.append(RequestRecord(request.method, request.path, None, 404, self.clock()))
        return json_response({"message": "404: Not Found", "code": 0}, 404)

    async def _run_route(
        self, route: _Route, ctx: RequestContext, api_path: str, fault: InjectedFault | None = None
    ) -> web.StreamResponse:
        request, params = ctx.request, ctx.params
        if fault is not None and fault.kind is FaultKind.RATE_LIMIT:
            return rate_limit_response(
                retry_after=fault.retry_after,
                is_global=fault.is_global,
                bucket=RateLimitBuckets.bucket_hash(route.template),
                limit=5,
                scope=fault.scope,
            )
        if fault is not None and fault.kind is FaultKind.SERVER_ERROR:
            return json_response({"message": f"{fault.status}: Server Error", "code": 0}, fault.status)
        if route.auth and request.headers.get("Authorization") != f"Bot {self.bot_token}":
            return json_response({"message": "401: Unauthorized", "code": 0}, 401)
        headers: dict[str, str] = {}
        if route.limit is not None and self.enforce_rate_limits:
            major = params.get(route.major, "") if route.major else ""
            allowed, headers, retry_after = self._buckets.check(
                f"{request.method} {route.template}", major, *route.limit
            )
            if not allowed:
                return rate_limit_response(
                    retry_after=retry_after,
                    is_global=False,
                    bucket=RateLimitBuckets.bucket_hash(f"{request.method} {route.template}"),
                    limit=route.limit[0],
                    scope="user",
                )
        try:
            response = await route.handler(ctx)
        except DiscordHTTPError as error:
            response = error.to_response()
        except CommandSchemaError as error:
            response = invalid_form_body(error.errors).to_response()
        for key, value in headers.items():
            response.headers[key] = value
        return response

    # ======================================================================================
    # REST: identity, gateway, application
    # ======================================================================================
    async def _get_me(self, ctx: RequestContext) -> web.Response:
        return json_response(
            {
                **self.bot_user.to_payload(),
                "verified": True,
                "mfa_enabled": False,
                "email": None,
                "locale": "en-US",
            }
        )

    async def _get_user(self, ctx: RequestContext) -> web.Response:
        user = self.users.get(int(ctx.params["user_id"])) if ctx.params["user_id"].isdigit() else None
        if user is None:
            raise not_found(ErrorCode.UNKNOWN_USER, "Unknown User")
        return json_response(user.to_payload())

    async def _create_dm(self, ctx: RequestContext) -> web.Response:
        body = await ctx.json()
        user = self.users.get(int(body.get("recipient_id", 0)))
        if user is None:
            raise not_found(ErrorCode.UNKNOWN_USER, "Unknown User")
        channel = self.dm_channels.get(user.id)
        if channel is None:
            channel = FakeChannel(id=new_snowflake(), name="", type=ChannelType.DM, recipient=user)
            self.dm_channels[user.id] = channel
            self.channels[channel.id] = channel
            self._channel_messages[channel.id] = []
        return json_response(channel.to_payload())

    def dm_channel(self, user: FakeUser | FakeMember) -> FakeChannel | None:
        """The bot's DM channel with ``user``, if the bot opened one."""
        return self.dm_channels.get(user.id)

    async def _get_gateway(self, ctx: RequestContext) -> web.Response:
        return json_response({"url": self.gateway_url})

    async def _get_gateway_bot(self, ctx: RequestContext) -> web.Response:
        return json_response(
            {
                "url": self.gateway_url,
                "shards": self.recommended_shards,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 999,
                    "reset_after": 14_400_000,
                    "max_concurrency": 1,
                },
            }
        )

    async def _get_application(self, ctx: RequestContext) -> web.Response:
        return json_response(
            {
                "id": str(self.application_id),
                "name": self.bot_user.username,
                "icon": None,
                "description": "A fake application",
                "summary": "",
                "type": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "verify_key": secrets.token_hex(32),
                "owner": self.owner_user.to_payload(),
                "team": None,
                "flags": self.application_flags,
                "bot": self.bot_user.to_payload(),
                "redirect_uris": [],
                "interactions_endpoint_url": None,
                "tags": [],
                "install_params": {
                    "scopes": ["bot", "applications.commands"],
                    "permissions": str(DEFAULT_BOT_PERMISSIONS),
                },
                "integration_types_config": {"0": {}},
                "approximate_guild_count": len(self.guilds),
            }
        )

    async def _list_app_emojis(self, ctx: RequestContext) -> web.Response:
        return json_response({"items": []})

    # ======================================================================================
    # REST: application commands
    # ======================================================================================
    @staticmethod
    def _day() -> int:
        return int(time.time() // 86_400)

    def _command_scope(self, ctx: RequestContext) -> int | None:
        if int(ctx.params["application_id"]) != self.application_id:
            raise DiscordHTTPError(403, 50001, "Missing Access")
        guild_id = ctx.params.get("guild_id")
        if guild_id is None:
            return None
        if int(guild_id) not in self.guilds:
            raise DiscordHTTPError(403, 50001, "Missing Access")
        return int(guild_id)

    def _count_creates(self, scope: int | None, new_names: int) -> None:
        """Discord's 200 creates per day (per guild, and for global commands); updates don't count."""
        if new_names == 0:
            return
        key = (scope, self._day())
        used = self._command_creates.get(key, 0)
        if used + new_names > self.daily_command_create_limit:
            retry_after = 86_400 - time.time() % 86_400
            raise DiscordHTTPError(
                429,
                ErrorCode.MAX_DAILY_COMMAND_CREATES,
                f"Max number of daily application command creates has been reached ({self.daily_command_create_limit})",
                extra={"retry_after": retry_after, "global": False},
                headers={
                    "Via": "1.1 google",
                    "Retry-After": str(int(retry_after)),
                    "X-RateLimit-Scope": "shared",
                },
            )
        self._command_creates[key] = used + new_names

    def _store_command(
        self, scope: int | None, payload: dict[str, Any], existing: dict[tuple[str, int], RegisteredCommand]
    ) -> RegisteredCommand:
        key = (payload["name"], payload.get("type", CommandType.CHAT_INPUT))
        old = existing.get(key)
        return RegisteredCommand(
            id=old.id if old else new_snowflake(),
            application_id=self.application_id,
            guild_id=scope,
            payload=payload,
            version=new_snowflake(),
        )

    async def _list_commands(self, ctx: RequestContext) -> web.Response:
        scope = self._command_scope(ctx)
        return json_response([c.to_payload() for c in self.commands.get(scope, {}).values()])

    async def _bulk_overwrite_commands(self, ctx: RequestContext) -> web.Response:
        scope = self._command_scope(ctx)
        body = await ctx.json()
        if not isinstance(body, list):
            raise form_error("_root", "LIST_TYPE_CONVERT", "Must be an array.")
        check_command_payloads(body, is_global=scope is None)
        existing = self.commands.get(scope, {})
        new_names = sum(1 for c in body if (c["name"], c.get("type", 1)) not in existing)
        self._count_creates(scope, new_names)
        stored = {}
        for payload in body:
            command = self._store_command(scope, payload, existing)
            stored[(command.name, command.type)] = command
        self.commands[scope] = stored
        await self._notify_world()
        return json_response([c.to_payload() for c in stored.values()])

    async def _create_command(self, ctx: RequestContext) -> web.Response:
        scope = self._command_scope(ctx)
        payload = await ctx.json()
        existing = self.commands.setdefault(scope, {})
        check_command_payloads([payload], is_global=scope is None)
        key = (payload["name"], payload.get("type", 1))
        is_new = key not in existing
        self._count_creates(scope, 1 if is_new else 0)
        command = self._store_command(scope, payload, existing)
        existing[key] = command
        return json_response(command.to_payload(), 201 if is_new else 200)

    def _command_by_id(self, ctx: RequestContext) -> tuple[int | None, RegisteredCommand]:
        scope = self._command_scope(ctx)
        for command in self.commands.get(scope, {}).values():
            if str(command.id) == ctx.params["command_id"]:
                return scope, command
        raise not_found(ErrorCode.UNKNOWN_APPLICATION_COMMAND, "Unknown application command")

    async def _get_command(self, ctx: RequestContext) -> web.Response:
        return json_response(self._command_by_id(ctx)[1].to_payload())

    async def _edit_command(self, ctx: RequestContext) -> web.Response:
        scope, command = self._command_by_id(ctx)
        changes = await ctx.json()
        merged = {**command.payload, **changes}
        check_command_payloads([merged], is_global=scope is None)
        stored = self.commands[scope]
        del stored[(command.name, command.type)]
        command.payload = merged
        command.version = new_snowflake()
        stored[(command.name, command.type)] = command
        return json_response(command.to_payload())

    async def _delete_command(self, ctx: RequestContext) -> web.Response:
        scope, command = self._command_by_id(ctx)
        del self.commands[scope][(command.name, command.type)]
        return no_content()

    async def _command_permissions(self, ctx: RequestContext) -> web.Response:
        self._command_scope(ctx)
        return json_response([])

    # ======================================================================================
    # REST: interaction callbacks and webhooks
    # ======================================================================================
    async def _interaction_callback(self, ctx: RequestContext) -> web.Response:
        interaction = (
            self.interactions.get(int(ctx.params["interaction_id"]))
            if ctx.params["interaction_id"].isdigit()
            else None
        )
        if interaction is None or interaction.token != ctx.params["token"]:
            raise not_found(ErrorCode.UNKNOWN_INTERACTION, "Unknown interaction")
        if interaction.responses:
            raise DiscordHTTPError(
                400, ErrorCode.INTERACTION_ALREADY_ACKNOWLEDGED, "Interaction has already been acknowledged."
            )
        if self.clock() - interaction.created_at > self.response_deadline_s:
            raise not_found(ErrorCode.UNKNOWN_INTERACTION, "Unknown interaction")
        body = await ctx.body(file_size_limit=interaction.attachment_size_limit)
        callback_type = body.payload.get("type")
        data = body.payload.get("data") or {}
        allowed = {
            InteractionType.APPLICATION_COMMAND: {
                CallbackType.CHANNEL_MESSAGE_WITH_SOURCE,
                CallbackType.DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE,
                CallbackType.MODAL,
            },
            InteractionType.MESSAGE_COMPONENT: {4, 5, 6, 7, 9},
            InteractionType.MODAL_SUBMIT: {4, 5, 6, 7},
        }[interaction.type]
        if callback_type not in allowed:
            raise form_error(
                "type",
                "INTERACTION_CALLBACK_TYPE_INVALID",
                f"Callback type {callback_type} is not valid for this interaction",
            )
        record = CallbackRecord(type=callback_type, data=data)
        message: FakeMessage | None = None
        if callback_type in (
            CallbackType.CHANNEL_MESSAGE_WITH_SOURCE,
            CallbackType.DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE,
        ):
            message = self._interaction_message(interaction)
            if callback_type == CallbackType.CHANNEL_MESSAGE_WITH_SOURCE:
                self._apply_body(
                    message,
                    RequestBody(payload=data, uploads=body.uploads),
                    editing=False,
                    allow_ephemeral=True,
                )
            else:
                message.flags = MessageFlag.LOADING | (int(data.get("flags") or 0) & MessageFlag.EPHEMERAL)
                interaction.deferred_pending = True
            record.files = list(message.attachments)
            interaction.original_message = message
            interaction.responses.append(record)
            await self._store_and_announce(message)
        elif callback_type == CallbackType.UPDATE_MESSAGE:
            assert interaction.source_message is not None
            message = interaction.source_message
            self._apply_body(
                message, RequestBody(payload=data, uploads=body.uploads), editing=True, allow_ephemeral=False
            )
            interaction.original_message = message
            interaction.responses.append(record)
            await self._announce_update(message)
        elif callback_type == CallbackType.DEFERRED_UPDATE_MESSAGE:
            interaction.original_message = interaction.source_message
            interaction.responses.append(record)
        elif callback_type == CallbackType.MODAL:
            validate_modal(data)
            interaction.modal = data
            interaction.responses.append(record)
        await interaction._notify()
        if ctx.query.get("with_response") not in ("1", "true", "True"):
            return no_content()
        response: dict[str, Any] = {
            "interaction": {
                "id": str(interaction.id),
                "type": interaction.type,
                "response_message_loading": bool(message and message.is_loading),
                "response_message_ephemeral": bool(message and message.is_ephemeral),
            },
            "resource": {"type": callback_type},
        }
        if message is not None:
            response["interaction"]["response_message_id"] = str(message.id)
            response["resource"]["message"] = message.to_payload()
        return json_response(response)

    def _interaction_message(self, interaction: FakeInteraction) -> FakeMessage:
        if interaction.type == InteractionType.APPLICATION_COMMAND:
            message_type = (
                MessageType.CHAT_INPUT_COMMAND
                if interaction.command_type == CommandType.CHAT_INPUT
                else MessageType.CONTEXT_MENU_COMMAND
            )
        else:
            message_type = MessageType.DEFAULT
        return FakeMessage(
            id=new_snowflake(),
            channel=interaction.channel,
            author=self.bot_user,
            type=message_type,
            webhook_id=self.application_id,
            application_id=self.application_id,
            interaction=interaction,
        )

    def _webhook_interaction(self, ctx: RequestContext) -> FakeInteraction:
        interaction = self._interactions_by_token.get(ctx.params["token"])
        if interaction is None or str(interaction.application_id) != ctx.params["application_id"]:
            raise not_found(ErrorCode.UNKNOWN_WEBHOOK, "Unknown Webhook")
        if (
            interaction.token_expired
            or self.clock() - interaction.created_at > Limit.INTERACTION_TOKEN_SECONDS
        ):
            interaction.token_expired = True
            raise DiscordHTTPError(401, ErrorCode.INVALID_WEBHOOK_TOKEN, "Invalid Webhook Token")
        return interaction

    def _webhook_target(self, interaction: FakeInteraction, message_id: str) -> FakeMessage:
        if message_id == "@original":
            if interaction.original_message is None or interaction.original_message.deleted:
                raise not_found(ErrorCode.UNKNOWN_MESSAGE, "Unknown Message")
            return interaction.original_message
        for message in interaction.messages:
            if str(message.id) == message_id and not message.deleted:
                return message
        raise not_found(ErrorCode.UNKNOWN_MESSAGE, "Unknown Message")

    async def _webhook_execute(self, ctx: RequestContext) -> web.Response:
        interaction = self._webhook_interaction(ctx)
        if not interaction.responses or interaction.response_type == CallbackType.MODAL:
            raise not_found(ErrorCode.UNKNOWN_WEBHOOK, "Unknown Webhook")
        body = await ctx.body(file_size_limit=interaction.attachment_size_limit)
        wait = ctx.query.get("wait") in ("1", "true", "True")
        if interaction.deferred_pending and interaction.original_message is not None:
            # The first followup after a type-5 defer replaces the "thinking..." message itself.
            message = interaction.original_message
            self._validate_message_payload(body.payload, body.uploads, creating=True)
            self._apply_body(message, body, editing=True, allow_ephemeral=False)
            message.history.pop()  # the placeholder being filled is not an edit a member sees
            message.edited_timestamp = None
            message.flags &= ~MessageFlag.LOADING
            payload_flags = int(body.payload.get("flags") or 0)
            message.flags |= payload_flags & MessageFlag.SETTABLE & ~MessageFlag.IS_VOICE_MESSAGE
            interaction.deferred_pending = False
            await self._announce_update(message)
        else:
            message = self._interaction_message(interaction)
            self._apply_body(message, body, editing=False, allow_ephemeral=True)
            interaction.followups.append(message)
            await self._store_and_announce(message)
        await interaction._notify()
        return json_response(message.to_payload()) if wait else no_content()

    async def _webhook_get_message(self, ctx: RequestContext) -> web.Response:
        interaction = self._webhook_interaction(ctx)
        return json_response(self._webhook_target(interaction, ctx.params["message_id"]).to_payload())

    async def _webhook_edit_message(self, ctx: RequestContext) -> web.Response:
        interaction = self._webhook_interaction(ctx)
        message = self._webhook_target(interaction, ctx.params["message_id"])
        if not message.is_ephemeral:
            self._refuse_in_archived_thread(message.channel)
        body = await ctx.body(file_size_limit=interaction.attachment_size_limit)
        completing_defer = message is interaction.original_message and interaction.deferred_pending
        self._apply_body(message, body, editing=True, allow_ephemeral=False)
        if completing_defer:
            message.history.pop()
            message.edited_timestamp = None
            message.flags &= ~MessageFlag.LOADING
            interaction.deferred_pending = False
        await self._announce_update(message)
        await interaction._notify()
        return json_response(message.to_payload())

    async def _webhook_delete_message(self, ctx: RequestContext) -> web.Response:
        interaction = self._webhook_interaction(ctx)
        message = self._webhook_target(interaction, ctx.params["message_id"])
        message.deleted = True
        await self._announce_delete(message)
        await interaction._notify()
        return no_content()

    # ======================================================================================
    # REST: channels and messages
    # ======================================================================================
    def _channel(self, ctx: RequestContext) -> FakeChannel:
        channel = (
            self.channels.get(int(ctx.params["channel_id"])) if ctx.params["channel_id"].isdigit() else None
        )
        if channel is None:
            raise not_found(ErrorCode.UNKNOWN_CHANNEL, "Unknown Channel")
        return channel

    def _require_bot_permissions(self, channel: FakeChannel, needed: int) -> None:
        if channel.guild is None:
            return
        bot_member = channel.guild.members[self.bot_user.id]
        granted = channel.permissions_for(bot_member)
        if not granted & Permission.VIEW_CHANNEL:
            raise DiscordHTTPError(403, 50001, "Missing Access")
        if granted & needed != needed:
            raise DiscordHTTPError(403, ErrorCode.MISSING_PERMISSIONS, "Missing Permissions")

    def _message_in(self, channel: FakeChannel, message_id: str) -> FakeMessage:
        message = self.messages_by_id.get(int(message_id)) if message_id.isdigit() else None
        if message is None or message.channel is not channel or message.deleted or message.is_ephemeral:
            raise not_found(ErrorCode.UNKNOWN_MESSAGE, "Unknown Message")
        return message

    def _rest_hides_content(self, message: FakeMessage) -> bool:
        """REST follows the app's portal switch, not the intents a gateway session asked for."""
        return (
            "message_content" not in self.privileged_intents
            and message.author is not self.bot_user
            and message.channel.type != ChannelType.DM
            and self.bot_user not in message.mentions
        )

    def _rest_message_payload(self, message: FakeMessage) -> dict[str, Any]:
        payload = message.to_payload(strip_content=self._rest_hides_content(message))
        if message.reference is not None and "referenced_message" in payload:
            # The replied-to message is a message of its own: blanked by its own rules.
            payload["referenced_message"] = message.reference.to_payload(
                strip_content=self._rest_hides_content(message.reference), include_reference=False
            )
        return payload

    async def _get_channel(self, ctx: RequestContext) -> web.Response:
        return json_response(self._channel(ctx).to_payload())

    async def _list_messages(self, ctx: RequestContext) -> web.Response:
        channel = self._channel(ctx)
        self._require_bot_permissions(channel, Permission.READ_MESSAGE_HISTORY)
        limit = min(int(ctx.query.get("limit", 50)), 100)
        history = sorted(self.messages(channel), key=lambda m: m.id, reverse=True)
        if "before" in ctx.query:
            history = [m for m in history if m.id < int(ctx.query["before"])]
        if "after" in ctx.query:
            history = sorted((m for m in history if m.id > int(ctx.query["after"])), key=lambda m: m.id)[
                :limit
            ]
            history.reverse()
        if "around" in ctx.query:
            around = int(ctx.query["around"])
            history = sorted(history, key=lambda m: abs(m.id - around))[:limit]
            history.sort(key=lambda m: m.id, reverse=True)
        return json_response([self._rest_message_payload(m) for m in history[:limit]])

    async def _get_message(self, ctx: RequestContext) -> web.Response:
        channel = self._channel(ctx)
        self._require_bot_permissions(channel, Permission.READ_MESSAGE_HISTORY)
        return json_response(self._rest_message_payload(self._message_in(channel, ctx.params["message_id"])))

    async def _create_message(self, ctx: RequestContext) -> web.Response:
        channel = self._channel(ctx)
        guild = channel.guild
        limit = guild.attachment_size_limit if guild else Limit.DEFAULT_ATTACHMENT_BYTES
        body = await ctx.body(file_size_limit=limit)
        needed = Permission.SEND_MESSAGES_IN_THREADS if channel.is_thread else Permission.SEND_MESSAGES
        if body.uploads:
            needed |= Permission.ATTACH_FILES
        self._require_bot_permissions(channel, needed)
        nonce = body.payload.get("nonce")
        if nonce is not None and len(str(nonce)) > 25:
            raise form_error("nonce", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
        if nonce is not None and body.payload.get("enforce_nonce"):
            earlier = self._nonces.get((self.bot_user.id, str(nonce)))
            if (
                earlier is not None
                and earlier[1] >= self.clock() - _NONCE_WINDOW_S
                and not earlier[0].deleted
            ):
                # Discord answers with the message that nonce already created, and creates nothing.
                return json_response(self._rest_message_payload(earlier[0]))
        await self._unarchive_to_post(channel)
        message = FakeMessage(id=new_snowflake(), channel=channel, author=self.bot_user)
        reference = body.payload.get("message_reference")
        if reference:
            target = self.messages_by_id.get(int(reference.get("message_id", 0)))
            if target is None or target.deleted or target.is_ephemeral:
                if reference.get("fail_if_not_exists", True):
                    raise form_error("message_reference", "REPLIES_UNKNOWN_MESSAGE", "Unknown message")
            else:
                message.reference = target
                message.type = MessageType.REPLY
        self._apply_body(message, body, editing=False, allow_ephemeral=False)
        if nonce is not None:
            self._nonces[(self.bot_user.id, str(nonce))] = (message, self.clock())
        await self._store_and_announce(message)
        return json_response(message.to_payload())

    async def _edit_message(self, ctx: RequestContext) -> web.Response:
        channel = self._channel(ctx)
        message = self._message_in(channel, ctx.params["message_id"])
        # The bot may edit any message it authored, interaction responses included (that is how a
        # response is still updated after its token expired).
        if message.author is not self.bot_user:
            raise DiscordHTTPError(
                403, ErrorCode.CANNOT_EDIT_OTHERS_MESSAGE, "Cannot edit a message authored by another user"
            )
        self._refuse_in_archived_thread(channel)
        guild = channel.guild
        body = await ctx.body(
            file_size_limit=guild.attachment_size_limit if guild else Limit.DEFAULT_ATTACHMENT_BYTES
        )
        self._apply_body(message, body, editing=True, allow_ephemeral=False)
        await self._announce_update(message)
        return json_response(message.to_payload())

    async def _delete_message(self, ctx: RequestContext) -> web.Response:
        channel = self._channel(ctx)
        message = self._message_in(channel, ctx.params["message_id"])
        self._refuse_in_archived_thread(channel)
        if message.author is not self.bot_user:
            self._require_bot_permissions(channel, Permission.MANAGE_MESSAGES)
        message.deleted = True
        await self._announce_delete(message)
        return no_content()

    async def _typing(self, ctx: RequestContext) -> web.Response:
        channel = self._channel(ctx)
        self._require_bot_permissions(
            channel, Permission.SEND_MESSAGES_IN_THREADS if channel.is_thread else Permission.SEND_MESSAGES
        )
        self.typing.append(channel)
        return no_content()

    async def _add_own_reaction(self, ctx: RequestContext) -> web.Response:
        channel = self._channel(ctx)
        message = self._message_in(channel, ctx.params["message_id"])
        emoji = ctx.params["emoji"]
        self._refuse_in_archived_thread(channel)
        if emoji not in message.reactions:
            self._require_bot_permissions(channel, Permission.ADD_REACTIONS | Permission.READ_MESSAGE_HISTORY)
        message.reactions.setdefault(emoji, set()).add(self.bot_user.id)
        await self._announce_reaction("MESSAGE_REACTION_ADD", message, self.bot_user, emoji)
        return no_content()

    async def _remove_own_reaction(self, ctx: RequestContext) -> web.Response:
        channel = self._channel(ctx)
        message = self._message_in(channel, ctx.params["message_id"])
        emoji = ctx.params["emoji"]
        message.reactions.get(emoji, set()).discard(self.bot_user.id)
        await self._announce_reaction("MESSAGE_REACTION_REMOVE", message, self.bot_user, emoji)
        return no_content()

    async def _create_thread(
        self, parent: FakeChannel, thread_id: int, name: str, thread_type: int
    ) -> FakeChannel:
        if not 1 <= len(name) <= 100:
            raise form_error("name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
        assert parent.guild is not None
        thread = FakeChannel(
            id=thread_id,
            name=name,
            type=thread_type,
            guild=parent.guild,
            parent_id=parent.id,
            owner_id=self.bot_user.id,
        )
        parent.guild.channels[thread.id] = thread
        self.channels[thread.id] = thread
        self._channel_messages[thread.id] = []
        payload = {
            **thread.to_payload(),
            "newly_created": True,
            "member": {
                "id": str(thread.id),
                "user_id": str(self.bot_user.id),
                "join_timestamp": iso_timestamp(),
                "flags": 0,
            },
        }
        await self.gateway.send_event(
            "THREAD_CREATE", payload, guild_id=parent.guild.id, intent=Intent.GUILDS
        )
        await self._notify_world()
        return thread

    def _refuse_in_archived_thread(self, channel: FakeChannel) -> None:
        """Archived threads are read-only: editing, deleting or reacting there is refused (50083)."""
        if channel.is_thread and channel.archived:
            raise DiscordHTTPError(400, ErrorCode.THREAD_ARCHIVED, "Thread is archived")

    async def _unarchive_to_post(self, channel: FakeChannel) -> None:
        """A message sent in an archived thread unarchives it, unless a moderator locked it.

        (Discord: "The API will helpfully automatically unarchive a thread when sending a message in
        that thread"; a locked thread takes MANAGE_THREADS.)
        """
        if not (channel.is_thread and channel.archived):
            return
        if channel.locked:
            self._require_bot_permissions(channel, Permission.MANAGE_THREADS)
        channel.archived = False
        channel.archive_timestamp = iso_timestamp()
        await self._announce_thread_update(channel)

    async def _announce_thread_update(self, thread: FakeChannel) -> None:
        assert thread.guild is not None
        await self.gateway.send_event(
            "THREAD_UPDATE", thread.to_payload(), guild_id=thread.guild.id, intent=Intent.GUILDS
        )
        await self._notify_world()

    async def _edit_channel(self, ctx: RequestContext) -> web.Response:
        """PATCH /channels/{id}: renaming a channel, or a thread's name / archived / locked / settings.

        Threads follow Discord's rules: an archived thread only accepts unarchiving; archiving,
        renaming and the archive duration are for the thread's creator or MANAGE_THREADS; locking
        and the other settings take MANAGE_THREADS; unarchiving a locked thread takes MANAGE_THREADS.
        """
        channel = self._channel(ctx)
        body = await ctx.json()
        if not isinstance(body, dict):
            raise invalid_form_body({})
        if channel.guild is None:
            raise DiscordHTTPError(400, 50024, "Cannot execute action on this channel type")
        if "name" in body and not (isinstance(body["name"], str) and 1 <= len(body["name"]) <= 100):
            raise form_error("name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
        if not channel.is_thread:
            unknown = set(body) - {"name", "topic", "nsfw", "rate_limit_per_user", "position"}
            if unknown:
                raise form_error(sorted(unknown)[0], "BASE_TYPE_INVALID", "Not a field of this channel type.")
            self._require_bot_permissions(channel, Permission.MANAGE_CHANNELS)
            if "name" in body:
                channel.name = body["name"]
            await self.gateway.send_event(
                "CHANNEL_UPDATE", channel.to_payload(), guild_id=channel.guild.id, intent=Intent.GUILDS
            )
            await self._notify_world()
            return json_response(channel.to_payload())
        return json_response(await self._edit_thread(channel, body))

    async def _edit_thread(self, thread: FakeChannel, body: dict[str, Any]) -> dict[str, Any]:
        owner_fields = {"name", "archived", "auto_archive_duration"}
        moderator_fields = {"locked", "invitable", "rate_limit_per_user", "flags", "applied_tags"}
        unknown = set(body) - owner_fields - moderator_fields
        if unknown:
            raise form_error(sorted(unknown)[0], "BASE_TYPE_INVALID", "Not a field of a thread.")
        for flag in ("archived", "locked"):
            if flag in body and not isinstance(body[flag], bool):
                raise form_error(flag, "BASE_TYPE_BOOLEAN", "Must be either true or false.")
        if "auto_archive_duration" in body and body["auto_archive_duration"] not in (60, 1440, 4320, 10080):
            raise form_error(
                "auto_archive_duration", "BASE_TYPE_CHOICES", "Value must be one of {60, 1440, 4320, 10080}."
            )
        unarchiving = thread.archived and body.get("archived") is False
        if thread.archived and not unarchiving:
            raise DiscordHTTPError(400, ErrorCode.THREAD_ARCHIVED, "Thread is archived")
        needed = Permission.SEND_MESSAGES_IN_THREADS if unarchiving else 0
        if unarchiving and thread.locked and body.get("locked") is not False:
            needed |= Permission.MANAGE_THREADS
        if set(body) & moderator_fields:
            needed |= Permission.MANAGE_THREADS
        archiving = body.get("archived") is True and not thread.archived
        if (
            archiving or set(body) & {"name", "auto_archive_duration"}
        ) and thread.owner_id != self.bot_user.id:
            needed |= Permission.MANAGE_THREADS
        self._require_bot_permissions(thread, needed)
        if "name" in body:
            thread.name = body["name"]
        if "auto_archive_duration" in body:
            thread.auto_archive_duration = body["auto_archive_duration"]
        if "locked" in body:
            thread.locked = body["locked"]
        if "archived" in body and body["archived"] != thread.archived:
            thread.archived = body["archived"]
            thread.archive_timestamp = iso_timestamp()
        await self._announce_thread_update(thread)
        return thread.to_payload()

    async def _thread_from_message(self, ctx: RequestContext) -> web.Response:
        channel = self._channel(ctx)
        message = self._message_in(channel, ctx.params["message_id"])
        if channel.is_thread or channel.guild is None:
            raise DiscordHTTPError(400, 50024, "Cannot execute action on this channel type")
        if message.thread is not None:
            raise DiscordHTTPError(400, 160004, "A thread has already been created for this message")
        self._require_bot_permissions(channel, Permission.CREATE_PUBLIC_THREADS)
        body = await ctx.json()
        # A thread started from a message has that message's id.
        thread = await self._create_thread(
            channel, message.id, str(body.get("name", "")), ChannelType.PUBLIC_THREAD
        )
        message.thread = thread
        return json_response(thread.to_payload(), 201)

    async def _thread_without_message(self, ctx: RequestContext) -> web.Response:
        channel = self._channel(ctx)
        if channel.is_thread or channel.guild is None:
            raise DiscordHTTPError(400, 50024, "Cannot execute action on this channel type")
        body = await ctx.json()
        thread_type = body.get("type", ChannelType.PRIVATE_THREAD)
        if thread_type not in ChannelType.THREADS:
            raise form_error("type", "BASE_TYPE_CHOICES", "Value must be one of {10, 11, 12}.")
        if body.get("auto_archive_duration") not in (None, 60, 1440, 4320, 10080):
            raise form_error(
                "auto_archive_duration", "BASE_TYPE_CHOICES", "Value must be one of {60, 1440, 4320, 10080}."
            )
        self._require_bot_permissions(
            channel,
            Permission.CREATE_PRIVATE_THREADS
            if thread_type == ChannelType.PRIVATE_THREAD
            else Permission.CREATE_PUBLIC_THREADS,
        )
        thread = await self._create_thread(channel, new_snowflake(), str(body.get("name", "")), thread_type)
        return json_response(thread.to_payload(), 201)

    # ======================================================================================
    # REST: guilds
    # ======================================================================================
    def _guild(self, ctx: RequestContext) -> FakeGuild:
        guild = self.guilds.get(int(ctx.params["guild_id"])) if ctx.params["guild_id"].isdigit() else None
        if guild is None:
            raise not_found(ErrorCode.UNKNOWN_GUILD, "Unknown Guild")
        return guild

    async def _get_guild(self, ctx: RequestContext) -> web.Response:
        payload = self._guild(ctx).to_create_payload()
        for key in (
            "members",
            "channels",
            "threads",
            "presences",
            "voice_states",
            "member_count",
            "large",
            "joined_at",
        ):
            payload.pop(key, None)
        return json_response(payload)

    async def _get_guild_channels(self, ctx: RequestContext) -> web.Response:
        return json_response([c.to_payload() for c in self._guild(ctx).channels.values() if not c.is_thread])

    async def _get_guild_roles(self, ctx: RequestContext) -> web.Response:
        return json_response([r.to_payload() for r in self._guild(ctx).roles.values()])

    async def _get_member(self, ctx: RequestContext) -> web.Response:
        guild = self._guild(ctx)
        member = guild.members.get(int(ctx.params["user_id"])) if ctx.params["user_id"].isdigit() else None
        if member is None:
            raise not_found(ErrorCode.UNKNOWN_MEMBER, "Unknown Member")
        return json_response(member.to_payload())

    # ======================================================================================
    # CDN
    # ======================================================================================
    def hold_cdn_downloads(self) -> None:
        """A slow network: attachment downloads send their first KiB, then stall until released."""
        if self._cdn_release is None:
            self._cdn_release = asyncio.Event()

    def release_cdn_downloads(self) -> None:
        if self._cdn_release is not None:
            self._cdn_release.set()
            self._cdn_release = None

    async def _serve_slowly(
        self, request: web.Request, attachment: FakeAttachment, release: asyncio.Event
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": attachment.content_type or "application/octet-stream",
                "Content-Length": str(attachment.size),
            }
        )
        await response.prepare(request)
        await response.write(attachment.data[:1024])
        await release.wait()
        await response.write(attachment.data[1024:])
        await response.write_eof()
        return response

    async def _serve_cdn(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        attachment = self.attachments.get(path) or self.attachments.get(quote(path))
        if attachment is not None:
            self.cdn_downloads.append(attachment)
            if self._cdn_release is not None:
                return await self._serve_slowly(request, attachment, self._cdn_release)
            return web.Response(
                body=attachment.data,
                headers={
                    "Content-Type": attachment.content_type or "application/octet-stream",
                    "Content-Length": str(attachment.size),
                },
            )
        if path.startswith(("/avatars/", "/embed/avatars/", "/icons/", "/app-icons/")):
            return web.Response(body=_TINY_PNG, headers={"Content-Type": "image/png"})
        self.cdn_misses.append(path)
        return web.Response(status=404, text="This content is no longer available.")
