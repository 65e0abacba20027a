"""Messages that mention the bot: which ones count, and how a refusal or a failure is answered.

Two cogs act on them, each on its own: in a jam's thread a mention takes a turn in the jam
(cogs/jam.py), anywhere else it continues the clip it replies to (cogs/continue_audio.py).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import discord

from bot.continuation import mentions_bot
from bot.replies import INTERNAL_ERROR_TEXT, answer_message
from inference.request import RequestError

logger = logging.getLogger(__name__)


def mentions_me(me: discord.ClientUser | None, message: discord.Message) -> bool:
    """A member's message in a server whose text mentions the bot `me`.

    Only a mention typed in the text counts: a reply pings the bot by default without one.
    """
    if me is None or message.author.bot or message.guild is None:
        return False
    return mentions_bot(message.content, me.id)


async def answer_mention(message: discord.Message, act: Callable[[], Awaitable[None]]) -> None:
    """Run `act` for a message that mentions the bot; a refusal, or the bot's own failure (logged),
    is answered in a reply."""
    try:
        await act()
    except RequestError as error:
        await answer_message(message, str(error))
    except Exception:
        logger.exception("a reply that mentions the bot failed (message %s)", message.id)
        await answer_message(message, INTERNAL_ERROR_TEXT)
