"""The fake Discord's world: users, guilds, channels, members, messages, attachments, interactions.

Each record knows how to render itself as the JSON payload Discord would send for it.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .constants import (
    DISCORD_EPOCH_MS,
    ChannelType,
    InteractionType,
    Limit,
    MessageFlag,
    MessageType,
    Permission,
)

_snowflake_lock = threading.Lock()
_snowflake_increment = itertools.count()
_last_snowflake = 0


def new_snowflake() -> int:
    """A unique, increasing snowflake whose timestamp is now (so ``discord.utils.snowflake_time`` works)."""
    global _last_snowflake
    with _snowflake_lock:
        candidate = (
            ((int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22)
            | (1 << 17)
            | (next(_snowflake_increment) % 4096)
        )
        _last_snowflake = max(candidate, _last_snowflake + 1)
        return _last_snowflake


def iso_timestamp(moment: datetime.datetime | None = None) -> str:
    """Discord's ISO-8601 timestamp format."""
    return (moment or datetime.datetime.now(datetime.UTC)).isoformat()


@dataclass(eq=False)
class FakeUser:
    id: int
    username: str
    bot: bool = False
    global_name: str | None = None

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": str(self.id),
            "username": self.username,
            "discriminator": "0",
            "global_name": self.global_name,
            "avatar": None,
            "public_flags": 0,
            "flags": 0,
            "banner": None,
            "accent_color": None,
            "avatar_decoration_data": None,
            "primary_guild": None,
        }
        if self.bot:
            payload["bot"] = True
        return payload


@dataclass(eq=False)
class FakeRole:
    id: int
    guild_id: int
    name: str
    permissions: int
    position: int = 0
    managed: bool = False

    def to_payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "permissions": str(self.permissions),
            "position": self.position,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "managed": self.managed,
            "mentionable": False,
            "icon": None,
            "unicode_emoji": None,
            "flags": 0,
        }


@dataclass(eq=False)
class FakeMember:
    user: FakeUser
    guild: FakeGuild
    roles: list[FakeRole] = field(default_factory=list)
    nick: str | None = None
    joined_at: str = field(default_factory=iso_timestamp)
    locale: str = "en-US"

    @property
    def id(self) -> int:
        return self.user.id

    @property
    def name(self) -> str:
        return self.user.username

    @property
    def mention(self) -> str:
        return self.user.mention

    @property
    def permissions(self) -> int:
        """Guild-wide permissions: @everyone plus every role; administrators and the owner get all."""
        if self.user.id == self.guild.owner_id:
            return Permission.ALL
        value = self.guild.everyone_role.permissions
        for role in self.roles:
            value |= role.permissions
        return Permission.ALL if value & Permission.ADMINISTRATOR else value

    def to_payload(self, *, with_user: bool = True, with_permissions: int | None = None) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "roles": [str(role.id) for role in self.roles],
            "nick": self.nick,
            "avatar": None,
            "banner": None,
            "joined_at": self.joined_at,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "pending": False,
            "flags": 0,
            "communication_disabled_until": None,
        }
        if with_user:
            payload["user"] = self.user.to_payload()
        if with_permissions is not None:
            payload["permissions"] = str(with_permissions)
        return payload


@dataclass(eq=False)
class FakeChannel:
    id: int
    name: str
    type: int = ChannelType.GUILD_TEXT
    guild: FakeGuild | None = None
    parent_id: int | None = None
    position: int = 0
    owner_id: int | None = None  # threads
    # Thread state (PATCH /channels/{thread_id}): an archived thread is read-only until unarchived.
    archived: bool = False
    locked: bool = False
    auto_archive_duration: int = 1440
    archive_timestamp: str | None = None
    # permission overwrites: (target id, type 0=role 1=member, allow, deny)
    overwrites: list[tuple[int, int, int, int]] = field(default_factory=list)
    recipient: FakeUser | None = None  # DMs
    created_at: str = field(default_factory=iso_timestamp)

    @property
    def mention(self) -> str:
        return f"<#{self.id}>"

    @property
    def is_thread(self) -> bool:
        return self.type in ChannelType.THREADS

    def permissions_for(self, member: FakeMember) -> int:
        """Discord's overwrite algorithm: base, then @everyone, roles, member overwrites."""
        base = member.permissions
        if base & Permission.ADMINISTRATOR:
            return Permission.ALL
        target: FakeChannel = self
        if self.is_thread and self.guild is not None and self.parent_id in self.guild.channels:
            target = self.guild.channels[self.parent_id]
        role_ids = {role.id for role in member.roles}
        for target_id, kind, allow, deny in target.overwrites:
            if kind == 0 and target_id == member.guild.id:
                base = (base & ~deny) | allow
        role_allow = role_deny = 0
        for target_id, kind, allow, deny in target.overwrites:
            if kind == 0 and target_id in role_ids:
                role_allow |= allow
                role_deny |= deny
        base = (base & ~role_deny) | role_allow
        for target_id, kind, allow, deny in target.overwrites:
            if kind == 1 and target_id == member.id:
                base = (base & ~deny) | allow
        return base

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"id": str(self.id), "type": self.type, "name": self.name, "flags": 0}
        if self.type == ChannelType.DM:
            assert self.recipient is not None
            return {
                "id": str(self.id),
                "type": self.type,
                "last_message_id": None,
                "flags": 0,
                "recipients": [self.recipient.to_payload()],
            }
        assert self.guild is not None
        payload["guild_id"] = str(self.guild.id)
        payload["parent_id"] = str(self.parent_id) if self.parent_id else None
        payload["rate_limit_per_user"] = 0
        payload["last_message_id"] = None
        if self.is_thread:
            payload.update(
                {
                    "owner_id": str(self.owner_id),
                    "message_count": 0,
                    "member_count": 1,
                    "total_message_sent": 0,
                    "thread_metadata": {
                        "archived": self.archived,
                        "auto_archive_duration": self.auto_archive_duration,
                        "archive_timestamp": self.archive_timestamp or self.created_at,
                        "locked": self.locked,
                        "create_timestamp": self.created_at,
                    },
                }
            )
        else:
            payload.update(
                {
                    "position": self.position,
                    "permission_overwrites": [
                        {"id": str(target_id), "type": kind, "allow": str(allow), "deny": str(deny)}
                        for target_id, kind, allow, deny in self.overwrites
                    ],
                    "topic": None,
                    "nsfw": False,
                }
            )
        return payload


@dataclass(eq=False)
class FakeGuild:
    id: int
    name: str
    owner_id: int
    attachment_size_limit: int = Limit.DEFAULT_ATTACHMENT_BYTES
    premium_tier: int = 0
    preferred_locale: str = "en-US"
    roles: dict[int, FakeRole] = field(default_factory=dict)
    channels: dict[int, FakeChannel] = field(default_factory=dict)
    members: dict[int, FakeMember] = field(default_factory=dict)
    joined_at: str = field(default_factory=iso_timestamp)
    # Server Settings → Integrations: top-level command name → ids of members/roles allowed to use it
    # even without its default_member_permissions.
    command_overrides: dict[str, set[int]] = field(default_factory=dict)

    @property
    def everyone_role(self) -> FakeRole:
        return self.roles[self.id]

    @property
    def text_channels(self) -> list[FakeChannel]:
        return [c for c in self.channels.values() if c.type == ChannelType.GUILD_TEXT]

    def to_create_payload(self) -> dict[str, Any]:
        """The GUILD_CREATE payload: the full guild with its roles, channels, threads and members."""
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(self.owner_id),
            "region": None,
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": self.premium_tier,
            "premium_subscription_count": 0,
            "premium_progress_bar_enabled": False,
            "preferred_locale": self.preferred_locale,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "vanity_url_code": None,
            "max_members": 500000,
            "max_video_channel_users": 25,
            "max_stage_video_channel_users": 50,
            "features": [],
            "roles": [role.to_payload() for role in self.roles.values()],
            "emojis": [],
            "stickers": [],
            "joined_at": self.joined_at,
            "large": False,
            "unavailable": False,
            "member_count": len(self.members),
            "voice_states": [],
            "members": [member.to_payload() for member in self.members.values()],
            "channels": [c.to_payload() for c in self.channels.values() if not c.is_thread],
            "threads": [c.to_payload() for c in self.channels.values() if c.is_thread],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "lazy": True,
            "application_id": None,
            "incidents_data": None,
        }


@dataclass(eq=False)
class FakeAttachment:
    """A file the fake CDN serves. ``data`` is the exact bytes uploaded."""

    id: int
    filename: str
    data: bytes
    content_type: str | None
    url: str
    proxy_url: str
    description: str | None = None
    duration_secs: float | None = None
    waveform: str | None = None
    ephemeral: bool = False
    title: str | None = None

    @property
    def size(self) -> int:
        return len(self.data)

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": self.url,
            "proxy_url": self.proxy_url,
        }
        if self.content_type is not None:
            payload["content_type"] = self.content_type
        if self.description is not None:
            payload["description"] = self.description
        if self.duration_secs is not None:
            payload["duration_secs"] = self.duration_secs
        if self.waveform is not None:
            payload["waveform"] = self.waveform
        if self.ephemeral:
            payload["ephemeral"] = True
        if self.title is not None:
            payload["title"] = self.title
        return payload


@dataclass(eq=False)
class MessageVersion:
    """A message's visible fields before an edit (kept so tests can see progress edits)."""

    content: str
    embeds: list[dict[str, Any]]
    attachments: list[FakeAttachment]
    components: list[dict[str, Any]]
    flags: int


@dataclass(eq=False)
class FakeMessage:
    id: int
    channel: FakeChannel
    author: FakeUser
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[FakeAttachment] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    flags: int = 0
    type: int = MessageType.DEFAULT
    mentions: list[FakeUser] = field(default_factory=list)
    mention_everyone: bool = False
    reference: FakeMessage | None = None
    webhook_id: int | None = None
    application_id: int | None = None
    interaction: FakeInteraction | None = None
    allowed_mentions: dict[str, Any] | None = None
    timestamp: str = field(default_factory=iso_timestamp)
    edited_timestamp: str | None = None
    history: list[MessageVersion] = field(default_factory=list)
    reactions: dict[str, set[int]] = field(default_factory=dict)
    thread: FakeChannel | None = None
    deleted: bool = False
    tts: bool = False
    nonce: str | int | None = None

    @property
    def guild(self) -> FakeGuild | None:
        return self.channel.guild

    @property
    def is_ephemeral(self) -> bool:
        return bool(self.flags & MessageFlag.EPHEMERAL)

    @property
    def is_loading(self) -> bool:
        """Still the "<bot> is thinking..." placeholder of a deferred interaction."""
        return bool(self.flags & MessageFlag.LOADING)

    @property
    def edit_count(self) -> int:
        return len(self.history)

    @property
    def text(self) -> str:
        """Content plus every embed's visible text, handy for assertions."""
        parts = [self.content]
        for embed in self.embeds:
            parts += [embed.get("title", ""), embed.get("description", "")]
            parts += [f"{f.get('name', '')} {f.get('value', '')}" for f in embed.get("fields", [])]
            parts += [embed.get("footer", {}).get("text", ""), embed.get("author", {}).get("name", "")]
        return "\n".join(p for p in parts if p)

    def snapshot(self) -> MessageVersion:
        return MessageVersion(
            content=self.content,
            embeds=list(self.embeds),
            attachments=list(self.attachments),
            components=list(self.components),
            flags=self.flags,
        )

    def buttons(self) -> list[dict[str, Any]]:
        """Every button in the message's action rows."""
        found = []
        for row in self.components:
            for component in row.get("components", []):
                if component.get("type") == 2:
                    found.append(component)
        return found

    def to_payload(self, *, strip_content: bool = False, include_reference: bool = True) -> dict[str, Any]:
        """The message object; ``strip_content`` blanks what the message content intent guards."""
        payload: dict[str, Any] = {
            "id": str(self.id),
            "channel_id": str(self.channel.id),
            "type": self.type,
            "content": "" if strip_content else self.content,
            "author": self.author.to_payload(),
            "attachments": [] if strip_content else [a.to_payload() for a in self.attachments],
            "embeds": [] if strip_content else list(self.embeds),
            "components": [] if strip_content else list(self.components),
            "mentions": [user.to_payload() for user in self.mentions],
            "mention_roles": [],
            "mention_everyone": self.mention_everyone,
            "pinned": False,
            "tts": self.tts,
            "timestamp": self.timestamp,
            "edited_timestamp": self.edited_timestamp,
            "flags": self.flags,
        }
        if self.nonce is not None:
            payload["nonce"] = self.nonce
        if self.webhook_id is not None:
            payload["webhook_id"] = str(self.webhook_id)
        if self.application_id is not None:
            payload["application_id"] = str(self.application_id)
        if self.reactions:
            payload["reactions"] = [
                {
                    "emoji": {"id": None, "name": emoji},
                    "count": len(users),
                    "me": False,
                    "burst_colors": [],
                    "count_details": {"burst": 0, "normal": len(users)},
                    "burst_count": 0,
                    "me_burst": False,
                }
                for emoji, users in self.reactions.items()
                if users
            ]
        if self.reference is not None:
            payload["message_reference"] = {
                "type": 0,
                "message_id": str(self.reference.id),
                "channel_id": str(self.reference.channel.id),
            }
            if self.reference.guild is not None:
                payload["message_reference"]["guild_id"] = str(self.reference.guild.id)
            if include_reference:
                payload["referenced_message"] = self.reference.to_payload(include_reference=False)
        if self.interaction is not None:
            interaction = self.interaction
            metadata: dict[str, Any] = {
                "id": str(interaction.id),
                "type": interaction.type,
                "user": interaction.user.to_payload(),
                "authorizing_integration_owners": {"0": str(interaction.guild.id)}
                if interaction.guild
                else {"1": str(interaction.user.id)},
            }
            if interaction.type == InteractionType.APPLICATION_COMMAND:
                metadata["name"] = interaction.command_name
                metadata["command_type"] = interaction.command_type
            if interaction.original_message is not None and interaction.original_message is not self:
                metadata["original_response_message_id"] = str(interaction.original_message.id)
            payload["interaction_metadata"] = metadata
            payload["interaction"] = {
                "id": str(interaction.id),
                "type": interaction.type,
                "name": interaction.command_name or "",
                "user": interaction.user.to_payload(),
            }
        if self.thread is not None:
            payload["thread"] = self.thread.to_payload()
        if self.channel.guild is not None:
            payload["guild_id"] = str(self.channel.guild.id)
        return payload


@dataclass(eq=False)
class CallbackRecord:
    """One interaction callback the bot POSTed: its type and the data it carried."""

    type: int
    data: dict[str, Any]
    files: list[FakeAttachment] = field(default_factory=list)


@dataclass(eq=False)
class FakeInteraction:
    """An interaction the fake sent to the bot, and everything the bot answered to it."""

    id: int
    token: str
    type: int
    application_id: int
    user: FakeUser
    member: FakeMember | None
    guild: FakeGuild | None
    channel: FakeChannel
    payload: dict[str, Any]
    created_at: float  # on the fake's clock
    command_name: str | None = None
    command_type: int | None = None
    attachment_size_limit: int = Limit.DEFAULT_ATTACHMENT_BYTES
    source_message: FakeMessage | None = None  # component interactions
    responses: list[CallbackRecord] = field(default_factory=list)
    original_message: FakeMessage | None = None
    followups: list[FakeMessage] = field(default_factory=list)
    modal: dict[str, Any] | None = None
    deferred_pending: bool = False  # a type-5 defer whose placeholder no followup/edit has replaced yet
    token_expired: bool = False
    _changed: asyncio.Condition | None = None

    @property
    def options(self) -> dict[str, Any]:
        """The raw options sent to the bot, by name (sub-commands flattened)."""
        found: dict[str, Any] = {}

        def walk(options: list[dict[str, Any]]) -> None:
            for option in options:
                if "options" in option:
                    walk(option["options"])
                elif "value" in option:
                    found[option["name"]] = option["value"]

        walk(self.payload.get("data", {}).get("options", []))
        return found

    @property
    def response_type(self) -> int | None:
        """The first callback's type (4 message, 5 deferred, 6, 7, 9 modal), or None before any."""
        return self.responses[0].type if self.responses else None

    @property
    def is_deferred(self) -> bool:
        return self.response_type in (5, 6)

    @property
    def is_ephemeral(self) -> bool:
        """Whether the interaction's response (the original message) is only visible to its user."""
        return self.original_message is not None and self.original_message.is_ephemeral

    @property
    def messages(self) -> list[FakeMessage]:
        """The original response (if any) and every separate followup message."""
        return ([self.original_message] if self.original_message is not None else []) + list(self.followups)

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def _notify(self) -> None:
        condition = self._condition()
        async with condition:
            condition.notify_all()

    async def wait_until(self, predicate: Callable[[FakeInteraction], bool], timeout: float = 10.0) -> None:
        """Wait until ``predicate(self)`` holds; re-checked after every callback, followup or edit."""
        condition = self._condition()

        async def waiter() -> None:
            async with condition:
                await condition.wait_for(lambda: predicate(self))

        try:
            await asyncio.wait_for(waiter(), timeout)
        except TimeoutError:
            raise TimeoutError(
                f"interaction {self.command_name!r} did not reach the expected state within {timeout}s; "
                f"responses={[r.type for r in self.responses]}, original={self.original_message and self.original_message.text!r}, "
                f"followups={[m.text for m in self.followups]!r}"
            ) from None

    async def wait_for_response(self, timeout: float = 10.0) -> CallbackRecord:
        """Wait for the bot's first callback (ack) and return it."""
        await self.wait_until(lambda i: bool(i.responses), timeout)
        return self.responses[0]

    async def wait_for_followup(self, count: int = 1, timeout: float = 10.0) -> FakeMessage:
        """Wait for ``count`` separate followup messages and return the last one."""
        await self.wait_until(lambda i: len(i.followups) >= count, timeout)
        return self.followups[count - 1]

    async def wait_for_final(
        self, predicate: Callable[[FakeMessage], bool], timeout: float = 10.0
    ) -> FakeMessage:
        """Wait until the original or a followup message satisfies ``predicate``; return that message."""
        await self.wait_until(lambda i: any(predicate(m) for m in i.messages), timeout)
        return next(m for m in self.messages if predicate(m))
