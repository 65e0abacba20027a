"""The fake Discord's modals, buttons, replies and message-content rules, against the real discord.py client."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from typing import Any

import discord
import pytest
from discord.ext import commands

from tests.fake_discord import (
    FakeDiscord,
    FakeDiscordValidationError,
    FakeMember,
    MessageFlag,
    running_bot,
)

pytestmark = pytest.mark.timeout(60)


class AskModal(discord.ui.Modal):
    name: discord.ui.TextInput[AskModal] = discord.ui.TextInput(label="name", custom_id="name")
    note: discord.ui.TextInput[AskModal] = discord.ui.TextInput(
        label="note", custom_id="note", required=False, default="none", max_length=10
    )

    def __init__(self, bot: FormBot, title: str = "Tell me") -> None:
        super().__init__(title=title)
        self.bot = bot

    async def on_submit(self, interaction: discord.Interaction) -> None:
        self.bot.submitted.append({"name": self.name.value, "note": self.note.value})
        await interaction.response.send_message(f"thanks {self.name.value}", ephemeral=True)


class FormBot(commands.Bot):
    """Opens modals, posts buttons, and records the messages it is shown."""

    def __init__(self, intents: discord.Intents) -> None:
        super().__init__(command_prefix=commands.when_mentioned, intents=intents)
        self.submitted: list[dict[str, str]] = []
        self.seen: list[discord.Message] = []
        self.errors: list[discord.HTTPException] = []
        bot = self

        @self.tree.command(description="Open a form")
        async def form(interaction: discord.Interaction, title: str = "Tell me") -> None:
            try:
                await interaction.response.send_modal(AskModal(bot, title))
            except discord.HTTPException as error:
                bot.errors.append(error)

        @self.tree.command(description="Post a button")
        async def button(interaction: discord.Interaction, custom_id: str) -> None:
            view = discord.ui.View(timeout=None)
            view.add_item(discord.ui.Button(label="Press", custom_id=custom_id))
            try:
                await interaction.response.send_message("press it", view=view)
            except discord.HTTPException as error:
                bot.errors.append(error)

        @self.tree.context_menu(name="Inspect")
        async def inspect(interaction: discord.Interaction, message: discord.Message) -> None:
            await interaction.response.send_modal(AskModal(bot, "About this message"))

    async def on_message(self, message: discord.Message) -> None:
        self.seen.append(message)


async def eventually(condition: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as running:
        yield running


async def start(
    fake: FakeDiscord, intents: discord.Intents
) -> tuple[FormBot, Any, Any, FakeMember, FakeMember]:
    guild = fake.add_guild("Studio")
    channel = fake.add_channel(guild, "music")
    return FormBot(intents), guild, channel, fake.add_member(guild, "alice"), fake.add_member(guild, "bob")


def no_content_intent() -> discord.Intents:
    intents = discord.Intents.none()
    intents.guilds = True
    intents.guild_messages = True
    return intents


async def test_a_member_submits_the_modal_the_bot_opened(fake: FakeDiscord) -> None:
    bot, _guild, channel, alice, _bob = await start(fake, no_content_intent())
    async with running_bot(fake, bot):
        await bot.tree.sync()
        opened = await fake.invoke_slash_command(alice, channel, "form")
        assert (await opened.wait_for_response()).type == 9
        assert opened.modal is not None and opened.modal["title"] == "Tell me"
        with pytest.raises(FakeDiscordValidationError, match="required"):
            await fake.submit_modal(alice, opened, {})  # "name" is required
        with pytest.raises(FakeDiscordValidationError, match="length"):
            await fake.submit_modal(alice, opened, {"name": "x", "note": "far too long a note"})
        with pytest.raises(FakeDiscordValidationError, match="no text input"):
            await fake.submit_modal(alice, opened, {"name": "x", "colour": "red"})
        submitted = await fake.submit_modal(alice, opened, {"name": "Alice"})
        answer = await submitted.wait_for_final(lambda m: m.is_ephemeral)
        assert answer.content == "thanks Alice"
        assert bot.submitted == [{"name": "Alice", "note": "none"}]  # the pre-filled value is kept
        assert (
            submitted.payload["type"] == 5
            and submitted.payload["data"]["custom_id"] == opened.modal["custom_id"]
        )


async def test_a_modal_or_button_discord_would_refuse_gets_a_400(fake: FakeDiscord) -> None:
    bot, _guild, channel, alice, _bob = await start(fake, no_content_intent())
    async with running_bot(fake, bot):
        await bot.tree.sync()
        await fake.invoke_slash_command(
            alice, channel, "form", {"title": "A title much longer than forty-five characters"}
        )
        await eventually(lambda: bool(bot.errors))
        assert bot.errors[-1].code == 50035 and "title" in str(bot.errors[-1])
        await fake.invoke_slash_command(alice, channel, "button", {"custom_id": "x" * 101})
        await eventually(lambda: len(bot.errors) == 2)
        assert bot.errors[-1].code == 50035 and "custom_id" in str(bot.errors[-1])
        ok = await fake.invoke_slash_command(alice, channel, "button", {"custom_id": "x" * 100})
        pressed = await ok.wait_for_final(lambda m: bool(m.buttons()))
        assert pressed.buttons()[0]["custom_id"] == "x" * 100


async def test_a_context_menu_can_open_a_modal_and_the_submit_carries_its_values(fake: FakeDiscord) -> None:
    bot, _guild, channel, alice, bob = await start(fake, no_content_intent())
    async with running_bot(fake, bot):
        await bot.tree.sync()
        clip = fake.add_attachment(
            "voice-message.ogg", b"OggS" + bytes(200), content_type="audio/ogg", duration_secs=2.5
        )
        voice = await fake.post_user_message(bob, channel, attachments=[clip], voice_message=True)
        opened = await fake.invoke_message_command(alice, voice, "Inspect")
        await opened.wait_for_response()
        target = opened.payload["data"]["resolved"]["messages"][str(voice.id)]
        assert target["flags"] & MessageFlag.IS_VOICE_MESSAGE
        assert target["attachments"][0]["duration_secs"] == 2.5 and target["attachments"][0]["waveform"]
        submitted = await fake.submit_modal(alice, opened, {"name": "bob's voice"})
        await submitted.wait_for_final(lambda m: m.is_ephemeral)
        assert bot.submitted[-1]["name"] == "bob's voice"


async def test_a_reply_that_mentions_the_bot_is_readable_but_the_members_message_it_replies_to_is_not(
    fake: FakeDiscord,
) -> None:
    bot, _guild, channel, alice, bob = await start(fake, no_content_intent())
    async with running_bot(fake, bot):
        clip = fake.add_attachment("riff.wav", b"RIFF" + bytes(100))
        riff = await fake.post_user_message(bob, channel, "my riff", attachments=[clip])
        reply = await fake.post_user_message(alice, channel, f"{fake.bot_mention} 8s more", reply_to=riff)
        await eventually(lambda: any(m.id == reply.id for m in bot.seen))
        seen = next(m for m in bot.seen if m.id == reply.id)
        assert seen.content.endswith("8s more")
        referenced = seen.reference.resolved if seen.reference else None
        assert isinstance(referenced, discord.Message)
        assert referenced.id == riff.id and referenced.attachments == [] and referenced.content == ""

        # The bot's own message is always readable, also as the message replied to.
        own = await bot.get_partial_messageable(channel.id).send(
            "a result", file=discord.File(__file__, "result.wav")
        )
        reply_to_own = await fake.post_user_message(
            alice, channel, f"{fake.bot_mention} more", reply_to=fake.messages_by_id[own.id]
        )
        await eventually(lambda: any(m.id == reply_to_own.id for m in bot.seen))
        seen_own = next(m for m in bot.seen if m.id == reply_to_own.id)
        assert isinstance(seen_own.reference.resolved, discord.Message)  # type: ignore[union-attr]
        assert seen_own.reference.resolved.attachments[0].filename == "result.wav"  # type: ignore[union-attr]


async def test_over_rest_without_the_portal_switch_the_replied_to_message_is_blanked_too() -> None:
    async with FakeDiscord(privileged_intents=("members", "presences")) as fake:
        bot, _guild, channel, alice, bob = await start(fake, no_content_intent())
        async with running_bot(fake, bot):
            clip = fake.add_attachment("riff.wav", b"RIFF" + bytes(100))
            riff = await fake.post_user_message(bob, channel, "my riff", attachments=[clip])
            reply = await fake.post_user_message(
                alice, channel, f"{fake.bot_mention} continue", reply_to=riff
            )
            fetched = await bot.get_partial_messageable(channel.id).fetch_message(reply.id)
            assert fetched.content.endswith("continue")  # it mentions the bot
            assert fetched.reference is not None and isinstance(fetched.reference.resolved, discord.Message)
            assert fetched.reference.resolved.attachments == []
            direct = await bot.get_partial_messageable(channel.id).fetch_message(riff.id)
            assert direct.content == "" and direct.attachments == []


async def test_without_the_guild_messages_intent_no_message_reaches_the_bot(fake: FakeDiscord) -> None:
    intents = discord.Intents.none()
    intents.guilds = True
    bot, _guild, channel, alice, _bob = await start(fake, intents)
    async with running_bot(fake, bot):
        await fake.post_user_message(alice, channel, f"{fake.bot_mention} hello")
        await asyncio.sleep(0.3)
        assert bot.seen == []


async def test_an_embed_image_from_an_attached_file_is_resolved_to_its_cdn_url(fake: FakeDiscord) -> None:
    bot, _guild, channel, _alice, _bob = await start(fake, no_content_intent())
    async with running_bot(fake, bot):
        embed = discord.Embed(title="picture").set_image(url="attachment://wave.png")
        embed.set_thumbnail(url="attachment://missing.png")
        sent = await bot.get_partial_messageable(channel.id).send(
            embed=embed, file=discord.File(io.BytesIO(b"\x89PNG fake"), filename="wave.png")
        )
        stored = fake.messages_by_id[sent.id]
        assert stored.embeds[0]["image"]["url"] == stored.attachments[0].url
        assert sent.embeds[0].image.url == stored.attachments[0].url  # what discord.py got back
        assert stored.embeds[0]["thumbnail"]["url"] == "attachment://missing.png"  # no such file: as written
