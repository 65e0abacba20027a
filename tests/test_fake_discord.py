"""The fake Discord against the real discord.py client: each story is what a bot does on real Discord."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.ext import commands

from tests.fake_discord import (
    MIB,
    ErrorCode,
    FakeChannel,
    FakeDiscord,
    FakeDiscordValidationError,
    FakeGuild,
    FakeMember,
    MessageFlag,
    running_bot,
)

pytestmark = pytest.mark.timeout(60)


class RecordingBot(commands.Bot):
    """A tiny bot whose commands record what they received and what Discord answered."""

    def __init__(self, **options: Any) -> None:
        options.setdefault("intents", discord.Intents.default())  # no message-content intent
        super().__init__(command_prefix=commands.when_mentioned, **options)
        self.calls: list[dict[str, Any]] = []
        self.errors: list[discord.HTTPException] = []
        self.seen_messages: list[discord.Message] = []
        self.edited_messages: list[discord.Message] = []
        self.threads: list[discord.Thread] = []
        self.resumed = asyncio.Event()
        self.release = asyncio.Event()
        self.hold = False
        self.output_bytes = 1000
        self._add_commands()

    async def on_message(self, message: discord.Message) -> None:
        self.seen_messages.append(message)
        if self.user in message.mentions and "continue" in message.content:
            await message.reply("on it")

    async def on_message_edit(self, before: discord.Message, after: discord.Message) -> None:
        self.edited_messages.append(after)

    async def on_thread_create(self, thread: discord.Thread) -> None:
        self.threads.append(thread)

    async def on_resumed(self) -> None:
        self.resumed.set()

    def _output(self) -> discord.File:
        return discord.File(io.BytesIO(b"R" * self.output_bytes), filename="music.wav")

    def _add_commands(self) -> None:
        bot = self

        @self.tree.command(description="Turn a prompt into music")
        @app_commands.describe(prompt="What it should sound like")
        @app_commands.choices(
            model=[
                app_commands.Choice(name="Small", value="small"),
                app_commands.Choice(name="Melody", value="melody"),
            ]
        )
        async def generate(
            interaction: discord.Interaction,
            prompt: str,
            duration: app_commands.Range[int, 1, 30] = 8,
            model: app_commands.Choice[str] | None = None,
            temperature: app_commands.Range[float, 0.0, 2.0] = 1.0,
            loop: bool = False,
            style: app_commands.Range[str, 3, 20] | None = None,
            input_audio: discord.Attachment | None = None,
        ) -> None:
            await interaction.response.defer(thinking=True)
            audio = await input_audio.read() if input_audio else None
            bot.calls.append(
                {
                    "prompt": prompt,
                    "duration": duration,
                    "model": model.value if model else None,
                    "temperature": temperature,
                    "loop": loop,
                    "style": style,
                    "audio": audio,
                    "audio_type": input_audio.content_type if input_audio else None,
                    "upload_limit": interaction.filesize_limit,
                }
            )
            if bot.hold:
                await bot.release.wait()
            try:
                await interaction.followup.send(f"Here is {prompt!r}", file=bot._output())
            except discord.HTTPException as error:
                bot.errors.append(error)
                if error.code == ErrorCode.INVALID_WEBHOOK_TOKEN and isinstance(
                    interaction.channel, discord.abc.Messageable
                ):
                    await interaction.channel.send(
                        f"{interaction.user.mention} here is {prompt!r}", file=bot._output()
                    )

        @self.tree.command(description="Answer only to the caller")
        async def secret(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("only you can see this", ephemeral=True)
            await interaction.followup.send("and this one is public")

        @self.tree.command(description="Acknowledge only when told to")
        async def late(interaction: discord.Interaction) -> None:
            await bot.release.wait()
            try:
                await interaction.response.defer()
            except discord.HTTPException as error:
                bot.errors.append(error)

        @self.tree.command(description="Post and discuss in a thread")
        async def discuss(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("Let's talk about it")
            message = await interaction.original_response()
            thread = await message.create_thread(name="talk")
            await thread.send("first!")

        @self.tree.command(description="Show progress, then the result")
        async def progress(interaction: discord.Interaction) -> None:
            await interaction.response.defer(thinking=True)
            for step in (1, 2, 3):
                await interaction.edit_original_response(content=f"progress {step}/3")
            await interaction.edit_original_response(content="done", attachments=[bot._output()])
            final = await interaction.original_response()
            bot.calls.append({"final": final.content, "files": [a.filename for a in final.attachments]})

        @self.tree.command(description="Queue a job with a cancel button")
        async def queue(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("queued, position 1", view=CancelView())

        @self.tree.context_menu(name="Continue this audio")
        async def continue_audio(interaction: discord.Interaction, message: discord.Message) -> None:
            audio = message.attachments[0]
            data = await audio.read()
            await interaction.response.send_message(f"continuing {audio.filename} ({len(data)} bytes)")


class CancelView(discord.ui.View):
    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.danger, custom_id="cancel-job")
    async def cancel(self, interaction: discord.Interaction, button: discord.ui.Button[CancelView]) -> None:
        await interaction.response.edit_message(content="cancelled", view=None)


@dataclass
class Server:
    fake: FakeDiscord
    guild: FakeGuild
    channel: FakeChannel
    alice: FakeMember


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with FakeDiscord() as fake:
        guild = fake.add_guild("Lo-fi Club", attachment_size_limit=1 * MIB)
        channel = fake.add_channel(guild, "music")
        alice = fake.add_member(guild, "alice")
        yield Server(fake, guild, channel, alice)


@pytest.fixture
async def bot(server: Server) -> AsyncIterator[RecordingBot]:
    client = RecordingBot(max_ratelimit_timeout=30)
    async with running_bot(server.fake, client):
        await client.tree.sync()
        yield client
    assert server.fake.unhandled_requests == []


async def test_bot_logs_in_gets_ready_and_sees_its_guild(server: Server, bot: RecordingBot) -> None:
    fake = server.fake
    assert bot.is_ready()
    assert bot.user is not None and bot.user.id == fake.bot_user.id
    assert bot.application_id == fake.application_id
    guild = bot.get_guild(server.guild.id)
    assert guild is not None and guild.name == "Lo-fi Club" and not guild.unavailable
    assert guild.get_channel(server.channel.id).name == "music"  # type: ignore[union-attr]
    assert fake.gateway.identify_count == 1
    assert fake.gateway.heartbeat_count >= 1  # discord.py heartbeats right after HELLO


async def test_tree_sync_stores_the_commands_and_counts_daily_creates(
    server: Server, bot: RecordingBot
) -> None:
    fake = server.fake
    names = {c["name"] for c in fake.registered_commands()}
    assert names == {"generate", "secret", "late", "discuss", "progress", "queue", "Continue this audio"}
    generate = next(c for c in fake.registered_commands() if c["name"] == "generate")
    duration = next(o for o in generate["options"] if o["name"] == "duration")
    assert (duration["min_value"], duration["max_value"]) == (1, 30)
    assert fake.command_create_count() == 7

    fetched = await bot.tree.fetch_commands()
    assert {c.name for c in fetched} == names
    await bot.tree.sync()  # the same commands again: updates, not creates
    assert fake.command_create_count() == 7

    bot.tree.copy_global_to(guild=discord.Object(server.guild.id))
    await bot.tree.sync(guild=discord.Object(server.guild.id))
    assert {c["name"] for c in fake.registered_commands(server.guild)} == names
    assert fake.command_create_count(server.guild) == 7


async def test_an_invalid_command_registration_is_refused_like_discord(
    server: Server, bot: RecordingBot
) -> None:
    assert bot.application_id is not None
    bad = [{"name": "Bad Name", "description": "", "type": 1, "options": []}]
    with pytest.raises(discord.HTTPException) as refused:
        await bot.http.bulk_upsert_global_commands(bot.application_id, payload=bad)
    assert refused.value.status == 400 and refused.value.code == ErrorCode.INVALID_FORM_BODY


async def test_past_the_daily_create_limit_discord_answers_429() -> None:
    async with FakeDiscord(daily_command_create_limit=2) as fake:
        fake.add_guild("Tiny")
        client = RecordingBot(max_ratelimit_timeout=30)
        async with running_bot(fake, client):
            with pytest.raises(discord.RateLimited):
                await client.tree.sync()  # seven new commands > 2 left today
            assert fake.registered_commands() == []


async def test_slash_command_with_options_and_attachment_reaches_the_handler_typed(
    server: Server, bot: RecordingBot
) -> None:
    fake = server.fake
    clip = fake.add_attachment("my clip.mp3", b"ID3" + bytes(500), content_type="audio/mpeg")
    interaction = await fake.invoke_slash_command(
        server.alice,
        server.channel,
        "generate",
        {
            "prompt": "lofi beats",
            "duration": 3,
            "model": "Melody",
            "temperature": 0.5,
            "loop": True,
            "style": "jazzy",
            "input_audio": clip,
        },
    )
    response = await interaction.wait_for_response()
    assert response.type == 5  # deferred: "MusicGen is thinking..."
    final = await interaction.wait_for_final(lambda m: not m.is_loading)

    assert bot.calls == [
        {
            "prompt": "lofi beats",
            "duration": 3,
            "model": "melody",
            "temperature": 0.5,
            "loop": True,
            "style": "jazzy",
            "audio": b"ID3" + bytes(500),
            "audio_type": "audio/mpeg",
            "upload_limit": 1 * MIB,
        }
    ]
    assert clip in fake.cdn_downloads  # attachment.read() went to the fake CDN
    assert clip.filename == "my_clip.mp3"  # Discord's filename sanitising
    # The first followup after a defer edits the thinking message: same id, loading flag cleared.
    assert final is interaction.original_message and interaction.followups == []
    assert final.flags & MessageFlag.LOADING == 0
    assert final.content == "Here is 'lofi beats'"
    assert [(a.filename, a.data) for a in final.attachments] == [("music.wav", b"R" * 1000)]
    # The bot saw its thinking message arrive and then be edited into the result.
    await _eventually(lambda: any(m.id == final.id and m.attachments for m in bot.edited_messages))
    assert any(m.id == final.id for m in bot.seen_messages)


async def test_an_ephemeral_response_is_never_dispatched_to_the_bot(
    server: Server, bot: RecordingBot
) -> None:
    fake = server.fake
    interaction = await fake.invoke_slash_command(server.alice, server.channel, "secret")
    public = await interaction.wait_for_followup()
    assert interaction.is_ephemeral and interaction.original_message is not None
    assert interaction.original_message.flags & MessageFlag.EPHEMERAL
    assert not public.is_ephemeral
    await _eventually(lambda: any(m.id == public.id for m in bot.seen_messages))
    assert all(m.id != interaction.original_message.id for m in bot.seen_messages)
    assert [m.content for m in fake.messages(server.channel)] == ["and this one is public"]


async def test_a_file_over_the_servers_upload_limit_is_refused(server: Server, bot: RecordingBot) -> None:
    fake = server.fake
    bot.output_bytes = 1 * MIB + 1
    interaction = await fake.invoke_slash_command(
        server.alice, server.channel, "generate", {"prompt": "huge"}
    )
    await _eventually(lambda: bool(bot.errors))
    assert (bot.errors[0].status, bot.errors[0].code) == (413, ErrorCode.REQUEST_ENTITY_TOO_LARGE)
    assert interaction.original_message is not None and interaction.original_message.is_loading

    channel = bot.get_channel(server.channel.id)
    assert isinstance(channel, discord.TextChannel)
    with pytest.raises(discord.HTTPException) as refused:
        await channel.send(file=discord.File(io.BytesIO(bytes(1 * MIB + 1)), "big.wav"))
    assert refused.value.code == ErrorCode.REQUEST_ENTITY_TOO_LARGE
    exactly_at_limit = await channel.send(file=discord.File(io.BytesIO(bytes(1 * MIB)), "ok.wav"))
    assert exactly_at_limit.attachments[0].size == 1 * MIB


async def test_after_the_token_expired_the_bot_posts_to_the_channel_instead(
    server: Server, bot: RecordingBot
) -> None:
    fake = server.fake
    bot.hold = True
    interaction = await fake.invoke_slash_command(
        server.alice, server.channel, "generate", {"prompt": "long queue"}
    )
    await interaction.wait_for_response()
    fake.expire_interaction(interaction)  # 15 minutes in the queue
    bot.release.set()

    posted = await fake.wait_for_message(
        server.channel, lambda m: "long queue" in m.content and bool(m.attachments)
    )
    assert (bot.errors[0].status, bot.errors[0].code) == (401, ErrorCode.INVALID_WEBHOOK_TOKEN)
    assert posted.webhook_id is None and posted.author is fake.bot_user
    assert server.alice.user in posted.mentions  # the requester is pinged
    assert interaction.followups == []


async def test_the_discord_client_refuses_invalid_option_values(server: Server, bot: RecordingBot) -> None:
    fake = server.fake
    refused: list[tuple[str, dict[str, Any]]] = [
        ("generate", {"prompt": "x", "duration": 31}),  # above max_value
        ("generate", {"prompt": "x", "duration": 0}),  # below min_value
        ("generate", {"prompt": "x", "duration": 2.5}),  # integer option
        ("generate", {"prompt": "x", "model": "large"}),  # not a choice
        ("generate", {"duration": 3}),  # required prompt missing
        ("generate", {"prompt": ""}),  # empty text cannot be sent
        ("generate", {"prompt": "x", "style": "no"}),  # below min_length
        ("generate", {"prompt": "x", "loop": "yes"}),  # boolean option
        ("generate", {"prompt": "x", "input_audio": "clip.mp3"}),  # attachment option
        ("generate", {"prompt": "x", "tempo": 120}),  # unknown option
        ("compose", {"prompt": "x"}),  # unknown command
        (
            "generate",
            {"prompt": "x", "input_audio": fake.add_attachment("big.wav", bytes(1 * MIB + 1))},
        ),  # over upload limit
    ]
    for name, options in refused:
        with pytest.raises(FakeDiscordValidationError):
            await fake.invoke_slash_command(server.alice, server.channel, name, options)
    assert fake.interactions == {}  # nothing reached the bot
    assert bot.calls == []


async def test_late_and_repeated_callbacks_get_discords_errors(server: Server, bot: RecordingBot) -> None:
    fake = server.fake
    interaction = await fake.invoke_slash_command(server.alice, server.channel, "late")
    fake.advance_clock(3.5)  # the bot missed the 3 s window
    bot.release.set()
    await _eventually(lambda: bool(bot.errors))
    assert isinstance(bot.errors[0], discord.NotFound) and bot.errors[0].code == ErrorCode.UNKNOWN_INTERACTION
    assert interaction.responses == []

    answered = await fake.invoke_slash_command(server.alice, server.channel, "secret")
    await answered.wait_for_response()
    async with aiohttp.ClientSession() as session:
        url = f"{fake.api_base}/interactions/{answered.id}/{answered.token}/callback?with_response=1"
        async with session.post(url, json={"type": 5}) as again:
            assert again.status == 400
            assert again.headers["Content-Type"] == "application/json"
            assert (await again.json())["code"] == ErrorCode.INTERACTION_ALREADY_ACKNOWLEDGED


async def test_a_resumable_disconnect_resumes_and_replays_missed_events(
    server: Server, bot: RecordingBot
) -> None:
    fake = server.fake
    await fake.drop_gateway(code=4000, wait_for_resume=False)
    missed = await fake.post_user_message(server.alice, server.channel, f"{fake.bot_mention} still there?")
    await asyncio.wait_for(bot.resumed.wait(), 15)
    await _eventually(lambda: any(m.id == missed.id for m in bot.seen_messages))
    assert fake.gateway.replayed_count >= 1  # the message posted while disconnected came with RESUME
    assert fake.gateway.resume_count == 1 and fake.gateway.identify_count == 1
    assert fake.gateway.connect_paths[-1].startswith("/resume-gateway")  # RESUME went to resume_gateway_url

    interaction = await fake.invoke_slash_command(server.alice, server.channel, "secret")
    await interaction.wait_for_followup()


async def test_message_content_is_hidden_without_the_intent_unless_the_bot_is_mentioned(
    server: Server, bot: RecordingBot
) -> None:
    fake = server.fake
    clip = fake.add_attachment("voice.ogg", b"OggS" + bytes(100))
    plain = await fake.post_user_message(server.alice, server.channel, "just chatting", attachments=[clip])
    pinged = await fake.post_user_message(
        server.alice, server.channel, f"{fake.bot_mention} continue this", attachments=[clip]
    )
    await _eventually(lambda: len(bot.seen_messages) >= 2)
    seen = {m.id: m for m in bot.seen_messages}
    assert seen[plain.id].content == "" and seen[plain.id].attachments == []
    assert (
        seen[pinged.id].content.endswith("continue this")
        and seen[pinged.id].attachments[0].filename == "voice.ogg"
    )

    # Mentioned, the bot replies; a reply pings the member it answers.
    reply = await fake.wait_for_message(server.channel, lambda m: m.content == "on it")
    assert reply.reference is pinged and server.alice.user in reply.mentions

    # The target of a message context-menu command always arrives whole.
    interaction = await fake.invoke_message_command(server.alice, plain, "Continue this audio")
    continued = await interaction.wait_for_final(lambda m: "continuing" in m.content)
    assert continued.content == "continuing voice.ogg (104 bytes)"


async def test_a_progress_message_is_edited_in_place_then_completed_with_the_file(
    server: Server, bot: RecordingBot
) -> None:
    fake = server.fake
    interaction = await fake.invoke_slash_command(server.alice, server.channel, "progress")
    await _eventually(lambda: bool(bot.calls))
    message = interaction.original_message
    assert message is not None and interaction.followups == []
    assert [version.content for version in message.history] == [
        "progress 1/3",
        "progress 2/3",
        "progress 3/3",
    ]
    assert bot.calls == [{"final": "done", "files": ["music.wav"]}]
    assert [a.data for a in message.attachments] == [b"R" * 1000]


async def test_a_button_under_a_message_reaches_its_view(server: Server, bot: RecordingBot) -> None:
    fake = server.fake
    interaction = await fake.invoke_slash_command(server.alice, server.channel, "queue")
    queued = await interaction.wait_for_final(lambda m: bool(m.buttons()))
    click = await fake.click_button(server.alice, queued, "cancel-job")
    assert (await click.wait_for_response()).type == 7  # UPDATE_MESSAGE
    assert queued.content == "cancelled" and queued.components == []
    with pytest.raises(FakeDiscordValidationError):
        await fake.click_button(server.alice, queued, "cancel-job")  # the button is gone


async def test_a_thread_started_from_a_message_has_its_id_and_is_announced(
    server: Server, bot: RecordingBot
) -> None:
    fake = server.fake
    interaction = await fake.invoke_slash_command(server.alice, server.channel, "discuss")
    first = await fake.wait_for_message(predicate=lambda m: m.content == "first!")
    assert interaction.original_message is not None
    thread = interaction.original_message.thread
    assert thread is not None and thread.id == interaction.original_message.id and first.channel is thread
    await _eventually(lambda: [t.id for t in bot.threads] == [thread.id])


async def test_an_injected_rate_limit_is_waited_out_by_discord_py(server: Server, bot: RecordingBot) -> None:
    fake = server.fake
    fake.inject_rate_limit("POST", "/channels/*/messages", retry_after=0.05)
    channel = bot.get_channel(server.channel.id)
    assert isinstance(channel, discord.TextChannel)
    sent = await channel.send("after the 429")
    statuses = [r.status for r in fake.requests_to("POST", "/channels/{channel_id}/messages")]
    assert statuses == [429, 200]
    assert sent.content == "after the 429"


async def test_unknown_routes_answer_404_and_are_logged(server: Server) -> None:
    fake = server.fake
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{fake.api_base}/guilds/1/auto-moderation/rules") as response:
            assert response.status == 404
            assert response.headers["Content-Type"] == "application/json"
    assert fake.unhandled_requests == ["GET /api/v10/guilds/1/auto-moderation/rules"]
    fake.unhandled_requests.clear()


async def test_an_auto_sharded_bot_identifies_each_shard_and_gets_its_guilds() -> None:
    async with FakeDiscord(recommended_shards=2) as fake:
        guilds = [fake.add_guild(f"Server {n}") for n in range(4)]
        channels = [fake.add_channel(g, "music") for g in guilds]
        members = [fake.add_member(g, f"member{n}") for n, g in enumerate(guilds)]
        client = commands.AutoShardedBot(command_prefix="!", intents=discord.Intents.default())

        @client.tree.command(description="Which shard am I on?")
        async def shard(interaction: discord.Interaction) -> None:
            await interaction.response.send_message(f"shard {interaction.guild.shard_id}")  # type: ignore[union-attr]

        async with running_bot(fake, client):
            await client.tree.sync()
            assert client.shard_count == 2
            assert sorted((s.shard_id, s.shard_count) for s in fake.gateway.live_sessions()) == [
                (0, 2),
                (1, 2),
            ]
            assert {g.id for g in client.guilds} == {g.id for g in guilds}
            for guild, channel, member in zip(guilds, channels, members, strict=False):
                interaction = await fake.invoke_slash_command(member, channel, "shard")
                reply = await interaction.wait_for_final(lambda m: m.content.startswith("shard"))
                assert reply.content == f"shard {(guild.id >> 22) % 2}"


async def _eventually(condition: Any, timeout: float = 10.0) -> None:
    """Wait until ``condition()`` holds (for things the bot does after answering)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def test_a_server_admin_can_let_a_member_use_a_command_hidden_by_its_default_permissions() -> None:
    async with FakeDiscord() as fake:
        guild = fake.add_guild("Admins")
        channel = fake.add_channel(guild, "general")
        member = fake.add_member(guild, "member")
        bot = commands.Bot(command_prefix="!", intents=discord.Intents.none())
        handled: list[int] = []

        @bot.tree.command(name="config", description="Admins only")
        @app_commands.default_permissions(manage_guild=True)
        async def config(interaction: discord.Interaction) -> None:
            handled.append(interaction.user.id)
            await interaction.response.send_message("ok", ephemeral=True)

        async with running_bot(fake, bot):
            await bot.tree.sync()
            with pytest.raises(FakeDiscordValidationError, match="cannot see /config"):
                await fake.invoke_slash_command(member, channel, "config", {})
            fake.allow_command(guild, "config", member)
            interaction = await fake.invoke_slash_command(member, channel, "config", {})
            await interaction.wait_for_response()
        assert handled == [member.id]
