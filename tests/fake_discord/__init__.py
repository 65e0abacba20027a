"""A fake Discord (REST + gateway + CDN) for testing the real discord.py client; see README.md."""

from __future__ import annotations

from .bot_runner import running_bot
from .commands import FakeDiscordValidationError
from .constants import (
    DEFAULT_BOT_PERMISSIONS,
    DEFAULT_MEMBER_PERMISSIONS,
    MIB,
    CallbackType,
    ChannelType,
    ErrorCode,
    Intent,
    Limit,
    MessageFlag,
    Permission,
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
)
from .server import FakeDiscord, RequestRecord

__all__ = [
    "DEFAULT_BOT_PERMISSIONS",
    "DEFAULT_MEMBER_PERMISSIONS",
    "MIB",
    "CallbackRecord",
    "CallbackType",
    "ChannelType",
    "ErrorCode",
    "FakeAttachment",
    "FakeChannel",
    "FakeDiscord",
    "FakeDiscordValidationError",
    "FakeGuild",
    "FakeInteraction",
    "FakeMember",
    "FakeMessage",
    "FakeRole",
    "FakeUser",
    "Intent",
    "Limit",
    "MessageFlag",
    "Permission",
    "RequestRecord",
    "running_bot",
]
