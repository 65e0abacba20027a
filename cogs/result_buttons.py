"""The buttons under every result: Re-roll, Continue, Use as melody, Details.

They are persistent: each button's custom id carries the action and the job id
(`musicgen:reroll:42`), and the bot registers the pattern at start (a `DynamicItem`), so buttons
posted before a restart keep working. Every request they make goes through the same checks as
/generate (caps, a model that is not configured, a restarting bot); refusals are ephemeral.
Under a request's takes, each take has its own row of the four buttons (`takes_view`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import discord
from discord.ext import commands

from bot.admission import JobAsk
from bot.audio.editing import clip_channels
from bot.continuation import posted_audio_of
from bot.replies import answer_error, clip_text, defer_publicly, escape_member_text
from bot.storage.jobs import Job
from cogs.utils.continuing import ClipContinuation
from cogs.utils.forms import prompt_input
from inference.request import (
    REQUEST_DEFAULTS,
    GenerationRequest,
    ModelVersion,
    RequestError,
)

if TYPE_CHECKING:
    from bot.app import MusicGenBot

logger = logging.getLogger(__name__)

# label, emoji, style of each action, in the order they appear.
ACTIONS: dict[str, tuple[str, str, discord.ButtonStyle]] = {
    "reroll": ("Re-roll", "🎲", discord.ButtonStyle.primary),
    "continue": ("Continue", "➕", discord.ButtonStyle.secondary),
    "melody": ("Use as melody", "🎼", discord.ButtonStyle.secondary),
    "details": ("Details", "ℹ️", discord.ButtonStyle.secondary),
}
# The same actions under a request's takes, each naming its take ({n}).
TAKE_LABELS: dict[str, str] = {
    "reroll": "Re-roll take {n}",
    "continue": "Continue take {n}",
    "melody": "Take {n} as melody",
    "details": "Take {n} details",
}
MELODY_MODEL: ModelVersion = "melody"
# What follows a stereo result, so that the new piece stays stereo (when it runs here).
STEREO_MELODY_MODEL: ModelVersion = "stereo-melody"
MEMBER_TEXT_FIELDS = ("prompt", "input_audio")


class ResultButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=r"musicgen:(?P<action>reroll|continue|melody|details):(?P<job_id>[0-9]{1,19})",
):
    """One button under a result; the custom id says which action on which job."""

    def __init__(self, action: str, job_id: int, *, take: int | None = None, row: int | None = None) -> None:
        """`take`: the button is one of a take's row (`row`) under a request's takes."""
        label, emoji, style = ACTIONS[action]
        if take is not None:
            label = TAKE_LABELS[action].format(n=take)
        super().__init__(
            discord.ui.Button(
                label=label, emoji=emoji, style=style, custom_id=f"musicgen:{action}:{job_id}", row=row
            )
        )
        self.action = action
        self.job_id = job_id

    @classmethod
    async def from_custom_id(  # type: ignore[override]
        cls, interaction: discord.Interaction, item: discord.ui.Button[Any], match: re.Match[str]
    ) -> ResultButton:
        return cls(match["action"], int(match["job_id"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        # Registered only while the cog is loaded (see `ResultButtonsCog`), so the client is the bot.
        pressed = cast("discord.Interaction[MusicGenBot]", interaction)
        try:
            await ResultActions(pressed.client).press(self.action, self.job_id, pressed)
        except Exception as error:
            await answer_error(interaction, error)


def result_view(job: Job) -> discord.ui.View:
    """The persistent view posted with a job's result."""
    view = discord.ui.View(timeout=None)
    for action in ACTIONS:
        view.add_item(ResultButton(action, job.id))
    return view


def takes_view(jobs: list[Job]) -> discord.ui.View:
    """The persistent view posted with a request's takes: a row of the four buttons for each take.

    Buttons rather than a select menu: with a row per take, any action on any take is one click,
    and 4 takes x 4 buttons fit in a message's 5 rows of 5. A select menu ("Take 2") beside the
    buttons would make it two steps, and the pick would be state the next click must find again
    (Discord does not send a select's value with a button press; a restart would forget it),
    where each button's custom id already says which action on which take.
    """
    view = discord.ui.View(timeout=None)
    for row, job in enumerate(jobs):
        assert job.take is not None
        for action in ACTIONS:
            view.add_item(ResultButton(action, job.id, take=job.take.number, row=row))
    return view


class MelodyModal(discord.ui.Modal, title="Use as melody"):
    """A new prompt for a melody-model job that follows this result."""

    prompt: discord.ui.TextInput[MelodyModal] = prompt_input(
        "prompt", required=True, placeholder="What to play over this melody"
    )

    def __init__(self, actions: ResultActions, job: Job) -> None:
        super().__init__(timeout=15 * 60)
        self.actions = actions
        self.job = job

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await self.actions.queue_melody(
            cast("discord.Interaction[MusicGenBot]", interaction), self.job, self.prompt.value
        )

    async def on_error(self, interaction: discord.Interaction, error: Exception) -> None:  # type: ignore[override]
        await answer_error(interaction, error)


def _timestamp(seconds: float | None) -> str:
    return "—" if seconds is None else f"<t:{int(seconds)}:T>"


def details_embed(job: Job) -> discord.Embed:
    """Every parameter of the job, its seed, its timings and who asked."""
    request = job.request
    embed = discord.Embed(title=f"Job #{job.id}", colour=discord.Colour.blurple())
    lines = []
    for name, value in request.to_dict().items():
        if name == "input_audio":
            value = job.input_audio_filename if value is not None else None
        if name in MEMBER_TEXT_FIELDS and value is not None:
            # A member's text, escaped rather than in a code span, which a backtick in it could close.
            lines.append(f"{name} = {escape_member_text(clip_text(str(value), 300))}")
        else:
            lines.append(f"{name} = `{value}`")
    embed.add_field(name="Parameters", value="\n".join(lines)[:1024], inline=False)
    embed.add_field(name="Seed", value=f"`{job.seed}`" + (" (random)" if job.seed_was_random else ""))
    if job.take is not None:
        embed.add_field(name="Take", value=f"{job.take.number} of {job.take.count} (jobs {job.take.span})")
    embed.add_field(name="Status", value=job.status.value)
    embed.add_field(name="Requested by", value=f"<@{job.user_id}>")
    timings = [f"asked {_timestamp(job.created_at)}", f"started {_timestamp(job.started_at)}"]
    if job.started_at is not None:
        timings.append(f"waited {job.started_at - job.created_at:.1f} s")
    if job.finished_at is not None and job.started_at is not None:
        timings.append(f"made in {job.finished_at - job.started_at:.1f} s")
    embed.add_field(name="Timings", value=", ".join(timings), inline=False)
    if job.continues is not None:
        embed.add_field(
            name="Continuation",
            value=(
                f"source {job.continues.source_seconds:.2f} s, context from {job.continues.context_start_s:.2f} s "
                f"({job.continues.context_s:.2f} s), {request.duration} s new"
            ),
            inline=False,
        )
    if job.replay_of is not None:
        embed.add_field(name="Replay of", value=f"#{job.replay_of}")
    return embed


class ResultActions:
    """What each button does to the job it is under."""

    def __init__(self, bot: MusicGenBot) -> None:
        self.bot = bot

    async def job_here(self, job_id: int, interaction: discord.Interaction[MusicGenBot]) -> Job:
        job = await self.bot.jobs.get(job_id)
        if job is None or job.guild_id != interaction.guild_id:
            raise RequestError(f"Job #{job_id} is not known here any more.")
        return job

    async def press(self, action: str, job_id: int, interaction: discord.Interaction[MusicGenBot]) -> None:
        job = await self.job_here(job_id, interaction)
        if action == "details":
            await interaction.response.send_message(embed=details_embed(job), ephemeral=True)
        elif action == "reroll":
            await self.reroll(job, interaction)
        elif action == "continue":
            if not isinstance(interaction.message, discord.Message):
                raise RequestError("I can't see that result's message any more.")
            # The same modal and checks as the "Continue with MusicGen" context menu; under a
            # request's takes, on this take's clip.
            await ClipContinuation(self.bot).open_modal(
                interaction, interaction.message, clip=self.take_clip(job, interaction.message)
            )
        else:
            self.check_melody_source(job)
            await self.bot.admission.check(JobAsk.of_interaction(interaction))
            await interaction.response.send_modal(MelodyModal(self, job))

    @staticmethod
    def take_clip(job: Job, message: discord.Message) -> discord.Attachment | None:
        """A take's own audio in the message that carries its request's takes (None: a job made alone)."""
        if job.take is None:
            return None
        if (clip := posted_audio_of(message, job.id)) is not None:
            return clip
        raise RequestError(
            f"Take {job.take.number}'s audio is not in that message, so it cannot be continued."
        )

    async def reroll(self, job: Job, interaction: discord.Interaction[MusicGenBot]) -> None:
        """The same parameters with a new random seed (a continuation continues the same clip)."""
        request = job.request.replace(seed=None)
        if request.input_audio is not None and not Path(request.input_audio).is_file():
            raise RequestError(f"Job #{job.id}'s input audio is no longer stored, so it cannot be re-rolled.")
        assert interaction.guild_id is not None
        self.bot.admission.check_model_available(request, self.bot.default_model_for(interaction.guild_id))
        await self.bot.admission.check(JobAsk.of_interaction(interaction))
        await defer_publicly(interaction)
        await self.bot.admission.queue_for_interaction(
            interaction, request, input_audio_filename=job.input_audio_filename, continues=job.continues
        )

    def check_melody_source(self, job: Job) -> None:
        if job.output_path is None or not Path(job.output_path).is_file():
            raise RequestError(
                f"Job #{job.id}'s audio is no longer stored, so it cannot be used as a melody."
            )

    async def melody_version_for(self, result_audio: Path) -> ModelVersion:
        """The melody model of the result's kind: stereo-melody for a stereo result (when it runs
        here), else melody. The audio decides, not the version that made it: a fine-tune may be
        either, and a mono model continuing a stereo clip posts a stereo piece."""
        if not self.bot.catalogue.is_configured(STEREO_MELODY_MODEL):
            return MELODY_MODEL
        channels = await asyncio.to_thread(
            clip_channels, result_audio, timeout_s=self.bot.config.engine_settings.engine.decode_timeout_s
        )
        return STEREO_MELODY_MODEL if channels == 2 else MELODY_MODEL

    async def queue_melody(
        self, interaction: discord.Interaction[MusicGenBot], job: Job, prompt: str
    ) -> None:
        """A melody-model job that follows this result (a stored copy, kept for /replay), in stereo
        when the result is stereo."""
        assert interaction.guild_id is not None
        self.check_melody_source(job)
        assert job.output_path is not None
        request = GenerationRequest(
            model_version=await self.melody_version_for(Path(job.output_path)),
            prompt=prompt,
            input_audio="pending-copy",
            duration=REQUEST_DEFAULTS.duration,
        ).validate()
        self.bot.admission.check_model_available(request, self.bot.default_model_for(interaction.guild_id))
        await self.bot.admission.check(JobAsk.of_interaction(interaction))
        await defer_publicly(interaction)
        source = Path(job.output_path)
        copy = self.bot.uploads_dir / f"{uuid.uuid4().hex}{source.suffix}"
        try:
            # A long piece is tens of megabytes of WAV: copied off the event loop.
            await asyncio.to_thread(shutil.copyfile, source, copy)
            await self.bot.admission.queue_for_interaction(
                interaction, request.replace(input_audio=str(copy)), input_audio_filename=f"job #{job.id}"
            )
        except BaseException:
            copy.unlink(missing_ok=True)
            raise


class ResultButtonsCog(commands.Cog):
    """Registers the buttons under results (`ResultButton` answers them) and gives the poster the view
    to attach."""

    def __init__(self, bot: MusicGenBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(ResultButton)
        self.bot.dispatcher.poster.view_for = result_view
        self.bot.dispatcher.poster.takes_view_for = takes_view

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(ResultButton)
        self.bot.dispatcher.poster.view_for = None
        self.bot.dispatcher.poster.takes_view_for = None


async def setup(bot: MusicGenBot) -> None:
    await bot.add_cog(ResultButtonsCog(bot))
