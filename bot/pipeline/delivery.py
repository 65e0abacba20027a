"""Posting a finished job to Discord: the audio file with an embed that says how it was made.

The interaction followup is used while the token lives (15 minutes); after that, or after a restart
(tokens are never stored), the bot posts in the channel itself and mentions the requester. A file
over the upload limit is re-encoded as MP3; if that is still too big, the message says so.

A post that meets a network fault (a connection reset, no answer within its timeout, a 5xx that
outlasted discord.py's own retries) is tried again a few times before the job is reported as not
delivered. Channel posts carry a nonce that Discord enforces, so a retry after an answer lost in
transit returns the message already made instead of posting the music twice. A followup (an
interaction webhook) cannot carry a nonce: before posting one again, the bot looks for its own
message for that job in the channel.

The takes of one request (`/generate takes:N`) are posted in one message (`post_takes`): every
take's audio and waveform picture (at most 4 + 4 of Discord's 10 files), one embed each, and the
buttons of each take. Their audio shares what one message may carry: a WAV over its share is
re-encoded as MP3, as a single result over the upload limit is.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import discord

from bot.audio.editing import encode_to_fit, new_part_path_for
from bot.audio.waveform import MarkedPart, waveform_png_of_file
from bot.pipeline.discord_faults import (
    DISCORD_REQUEST_ERRORS,
    DISCORD_TIMEOUTS,
    TRANSIENT_DISCORD_ERRORS,
    DiscordTimeouts,
    answer_within,
    describe_fault,
    retry_transient,
)
from bot.pipeline.status_message import is_dead_token_error
from bot.replies import CONTENT_LIMIT, EMBED_TOTAL_LIMIT, clip_text, escape_member_text, fit_embed
from bot.storage.jobs import Job
from inference.protocol import GenerationResult

logger = logging.getLogger(__name__)

# Discord's default upload limit per file (boosted guilds allow more; interactions tell us theirs).
DEFAULT_UPLOAD_LIMIT_BYTES = 10 * 1024 * 1024
# Discord refuses a request over 25 MiB, whatever the per-file limit: the takes' files share it.
REQUEST_LIMIT_BYTES = 25 * 1024 * 1024
# Room left in a request for its JSON and the multipart framing around the files.
REQUEST_OVERHEAD_BYTES = 64 * 1024
EMBED_COLOUR = discord.Colour.blurple()
# Pauses between attempts to post a result (so len + 1 attempts): a blip passes, an outage is reported.
RESULT_RETRY_DELAYS_S = (1.0, 4.0, 10.0)
# The channel's newest messages searched for a followup whose answer was lost (one request).
LOST_FOLLOWUP_SEARCH_LIMIT = 50
# Shown in the embed's own fields, so left out of "other settings".
_FIELDS_SHOWN_SEPARATELY = {"model_version", "prompt", "duration", "seed", "input_audio"}


@dataclass(frozen=True)
class PostedResult:
    message_id: int
    posted_format: str  # "wav", "mp3", or "none" when no file fitted


@dataclass(frozen=True)
class PostedTakes:
    """The one message that carries a request's takes, and the format each take was posted in."""

    message_id: int
    posted_formats: dict[int, str]  # by job id, as `PostedResult.posted_format`


# Posts a job its own way and returns what it posted, or None when the job is not one of its own.
OwnWayPost = Callable[[Job, GenerationResult, discord.Interaction | None], Awaitable[PostedResult | None]]


@dataclass
class _Post:
    """One message to deliver: by followup while the token lives, else in the channel."""

    followup: Callable[[], dict[str, Any]]
    channel: Callable[[], dict[str, Any]]
    timeout_s: float
    # Recognises the message a followup attempt made when its answer was lost (None: it cannot be
    # looked up, an ephemeral message is in no channel's history).
    is_ours: Callable[[discord.Message], bool] | None
    # A followup went out and got no answer (or a 5xx): it may have been posted all the same.
    followup_tried: bool = field(default=False, init=False)


def is_embed_of(embed: discord.Embed, job_id: int) -> bool:
    """The embed is job `job_id`'s: its footer starts with "Job #N " (one per take in a message of takes)."""
    return (embed.footer.text or "").startswith(f"Job #{job_id} ")


def is_result_of(message: discord.Message, job_id: int) -> bool:
    """The message carries job `job_id`'s result: one of its embeds is the job's."""
    return any(is_embed_of(embed, job_id) for embed in message.embeds)


def describe_size(size_bytes: int) -> str:
    return f"{size_bytes / (1024 * 1024):.1f} MiB"


def result_embed(job: Job, result: GenerationResult) -> discord.Embed:
    """Prompt, model, duration, seed, the other non-default settings and who asked."""
    request = job.request
    # The prompt is the member's text: escaped, so it cannot pass a masked link off as the bot's.
    prompt = escape_member_text(request.prompt) if request.prompt else None
    embed = discord.Embed(title=clip_text(prompt or "Music from your clip", 256), colour=EMBED_COLOUR)
    if prompt and len(prompt) > 256:
        embed.description = prompt
    embed.add_field(name="Model", value=request.model_version)
    if job.continues is not None:
        embed.add_field(
            name="Duration",
            value=f"{result.duration_s:.1f} s ({job.continues.source_seconds:.1f} s + {request.duration} s new)",
        )
    else:
        embed.add_field(name="Duration", value=f"{result.duration_s:.1f} s")
    embed.add_field(name="Seed", value=f"`{result.seed}`")
    if job.continues is not None:
        source = escape_member_text(clip_text(job.input_audio_filename or "the clip", 100))
        if job.continues.message_id is not None and job.continues.channel_id is not None:
            link = f"https://discord.com/channels/{job.guild_id}/{job.continues.channel_id}/{job.continues.message_id}"
            source = f"[{source}]({link})"
        embed.add_field(
            name="Continues",
            value=f"{source}, from its last {job.continues.context_s:.1f} s"[:1024],
            inline=False,
        )
    elif job.input_audio_filename:
        role = "continued" if request.continuation else "melody"
        embed.add_field(name="Input audio", value=f"{escape_member_text(job.input_audio_filename)} ({role})")
    others = {k: v for k, v in request.non_default_fields().items() if k not in _FIELDS_SHOWN_SEPARATELY}
    if others:
        embed.add_field(
            name="Other settings",
            value="\n".join(f"{name} = `{value}`" for name, value in others.items())[:1024],
            inline=False,
        )
    embed.add_field(name="Requested by", value=f"<@{job.user_id}>", inline=False)
    replay = f" · replay of #{job.replay_of}" if job.replay_of else ""
    embed.set_footer(text=f"Job #{job.id}{replay} · /replay {job.id} makes it again")
    return fit_embed(embed)


def take_embed(job: Job, result: GenerationResult, *, first: bool) -> discord.Embed:
    """A take's embed in the takes' message: the first one made says everything (as a result's
    embed does) and which take it is; each later one only which take, its seed and its length."""
    assert job.take is not None
    take = f"{job.take.number} of {job.take.count}"
    if first:
        embed = result_embed(job, result)
        embed.insert_field_at(3, name="Take", value=take)
        return embed
    embed = discord.Embed(title=f"Take {take}", colour=EMBED_COLOUR)
    embed.add_field(name="Seed", value=f"`{result.seed}`")
    embed.add_field(name="Duration", value=f"{result.duration_s:.1f} s")
    embed.set_footer(text=f"Job #{job.id} · /replay {job.id} makes it again")
    return embed


def fit_embeds_together(embeds: list[discord.Embed]) -> list[discord.Embed]:
    """Discord's 6000 characters count over all of a message's embeds: the first (the only long
    one) gives way, its description first and then its last fields, so the later ones survive whole."""
    first, later = embeds[0], embeds[1:]
    room = EMBED_TOTAL_LIMIT - sum(len(embed) for embed in later)
    if len(first) > room:
        first.description = None
    while len(first) > room and first.fields:
        first.remove_field(len(first.fields) - 1)
    return embeds


@dataclass(frozen=True)
class Attachment:
    """A file to post, kept as a path or bytes: a `discord.File` is consumed by one upload, so each
    try of a post builds fresh ones."""

    filename: str
    path: Path | None = None
    data: bytes | None = None

    def file(self) -> discord.File:
        if self.path is not None:
            return discord.File(self.path, filename=self.filename)
        assert self.data is not None
        return discord.File(io.BytesIO(self.data), filename=self.filename)


def upload_size(attachments: Sequence[Attachment]) -> int:
    """Bytes a post uploads (its timeout grows with them)."""
    return sum(a.path.stat().st_size if a.path is not None else len(a.data or b"") for a in attachments)


class ResultPoster:
    """Posts results and failure notices, by followup while possible, else in the channel."""

    def __init__(
        self,
        client: discord.Client,
        *,
        retry_delays_s: tuple[float, ...] = RESULT_RETRY_DELAYS_S,
        timeouts: DiscordTimeouts = DISCORD_TIMEOUTS,
    ) -> None:
        self._client = client
        # The buttons under every result, and under a request's takes (set by the cog that answers them).
        self.view_for: Callable[[Job], discord.ui.View] | None = None
        self.takes_view_for: Callable[[list[Job]], discord.ui.View] | None = None
        # The feature that posts some jobs its own way (a jam turn, in its thread; set by its cog).
        self.own_way: OwnWayPost | None = None
        self.retry_delays_s = retry_delays_s
        self.timeouts = timeouts

    def channel(self, job: Job) -> discord.PartialMessageable:
        """The job's channel, for posting and editing with the bot's own permissions (no token needed)."""
        return self._client.get_partial_messageable(job.channel_id, guild_id=job.guild_id)

    def upload_limit(self, job: Job, interaction: discord.Interaction | None) -> int:
        if interaction is not None:
            return interaction.filesize_limit
        guild = self._client.get_guild(job.guild_id)
        return guild.filesize_limit if guild is not None else DEFAULT_UPLOAD_LIMIT_BYTES

    async def choose_file(
        self,
        job: Job,
        result: GenerationResult,
        limit: int,
        *,
        limit_name: str = "this server's upload limit",
    ) -> tuple[Path | None, str, str]:
        """The file to attach, its format, and a note for the message (why it is MP3, or why there is none).

        A WAV over the limit becomes an MP3 at the best bitrate that fits; the whole piece of a
        continuation that fits in no format is replaced by its new seconds alone. `limit_name` says
        in the note what the limit is.
        """
        path = Path(result.output_path)
        size = path.stat().st_size
        if size <= limit:
            return path, result.output_format, ""
        fitted = (
            await asyncio.to_thread(encode_to_fit, path, limit) if result.output_format == "wav" else None
        )
        if fitted is not None:
            return (
                fitted.path,
                fitted.format,
                (
                    f"The WAV ({describe_size(size)}) is over {limit_name} "
                    f"({describe_size(limit)}), so here it is as MP3 ({fitted.bitrate_kbps} kbit/s)."
                ),
            )
        new_part = new_part_path_for(path)
        if job.continues is not None and new_part.is_file():
            fitted = await asyncio.to_thread(encode_to_fit, new_part, limit)
            if fitted is not None:
                return (
                    fitted.path,
                    fitted.format,
                    (
                        f"The whole piece ({result.duration_s:.0f} s) does not fit {limit_name} "
                        f"({describe_size(limit)}) even as MP3, so here is only the new part ({job.request.duration} s)."
                    ),
                )
        return (
            None,
            "none",
            (
                f"The result ({describe_size(size)}) is over {limit_name} ({describe_size(limit)}), "
                "so I could not attach it. Try a shorter duration or output_format mp3."
            ),
        )

    async def picture(self, job: Job, result: GenerationResult) -> bytes | None:
        """The waveform PNG for the embed (None if it cannot be drawn: the music is posted anyway)."""
        parts: list[MarkedPart] = []
        if job.continues is not None:
            original = job.continues.source_seconds
            parts = [MarkedPart(0.0, original, "original"), MarkedPart(original, result.duration_s, "new")]
        try:
            return await asyncio.to_thread(waveform_png_of_file, result.output_path, parts=parts)
        except Exception:
            logger.warning("job %s: could not draw the waveform", job.id, exc_info=True)
            return None

    async def post_result(
        self, job: Job, result: GenerationResult, interaction: discord.Interaction | None
    ) -> PostedResult:
        if self.own_way is not None:
            posted = await self.own_way(job, result, interaction)
            if posted is not None:
                return posted
        path, posted_format, note = await self.choose_file(job, result, self.upload_limit(job, interaction))
        embed = result_embed(job, result)
        picture = await self.picture(job, result)
        picture_name = f"musicgen-{job.id}.png"
        if picture is not None:
            embed.set_image(url=f"attachment://{picture_name}")

        def message(content: str) -> dict[str, Any]:
            # A discord.File is consumed by one upload: build a fresh one per attempt.
            kwargs: dict[str, Any] = {
                "content": "\n".join(part for part in (content, note) if part),
                "embed": embed,
                "allowed_mentions": discord.AllowedMentions(users=[discord.Object(job.user_id)]),
            }
            files = []
            if path is not None:
                files.append(discord.File(path, filename=f"musicgen-{job.id}.{posted_format}"))
            if picture is not None:
                files.append(discord.File(io.BytesIO(picture), filename=picture_name))
            if files:
                kwargs["files"] = files
            if self.view_for is not None:
                kwargs["view"] = self.view_for(job)
            return kwargs

        def channel_message() -> dict[str, Any]:
            # Discord returns the message this nonce already made (a retry whose answer was lost).
            return {
                **message(f"<@{job.user_id}> your music from job #{job.id} is ready."),
                "nonce": f"job-{job.id}",
            }

        upload_bytes = (path.stat().st_size if path is not None else 0) + len(picture or b"")
        sent = await self._post_retrying(
            job,
            interaction,
            followup=lambda: message(f"<@{job.user_id}> your music is ready."),
            channel=channel_message,
            upload_bytes=upload_bytes,
            what=f"job {job.id}: posting the result",
        )
        return PostedResult(sent.id, posted_format)

    async def post_takes(
        self,
        made: list[tuple[Job, GenerationResult]],
        missing: list[str],
        interaction: discord.Interaction | None,
    ) -> PostedTakes:
        """Post the takes made of one request (in take order) in one message; `missing`: a line for
        each take that was not made. Network faults are retried as for one result."""
        lead = made[0][0]
        take = lead.take
        assert take is not None
        pictures = [await self.picture(job, result) for job, result in made]
        files, formats, notes = await self._takes_files(made, pictures, self.upload_limit(lead, interaction))
        embeds = []
        for index, ((job, result), picture) in enumerate(zip(made, pictures, strict=True)):
            embed = take_embed(job, result, first=index == 0)
            if picture is not None:
                embed.set_image(url=f"attachment://musicgen-{job.id}.png")
            embeds.append(embed)
        embeds = fit_embeds_together(embeds)
        jobs = [job for job, _ in made]

        def message(content: str) -> dict[str, Any]:
            kwargs: dict[str, Any] = {
                "content": clip_text("\n".join([content, *missing, *notes]), CONTENT_LIMIT),
                "embeds": embeds,
                "allowed_mentions": discord.AllowedMentions(users=[discord.Object(lead.user_id)]),
            }
            if files:
                kwargs["files"] = [attachment.file() for attachment in files]
            if self.takes_view_for is not None:
                kwargs["view"] = self.takes_view_for(jobs)
            return kwargs

        def channel_message() -> dict[str, Any]:
            # Discord returns the message this nonce already made (a retry whose answer was lost).
            return {
                **message(f"<@{lead.user_id}> your {take.count} takes (jobs {take.span}) are ready."),
                "nonce": f"takes-{take.group}",
            }

        sent = await self._post_retrying(
            lead,
            interaction,
            followup=lambda: message(f"<@{lead.user_id}> your {take.count} takes are ready."),
            channel=channel_message,
            upload_bytes=upload_size(files),
            what=f"jobs {take.span}: posting the takes",
        )
        return PostedTakes(sent.id, formats)

    async def _post_retrying(
        self,
        job: Job,
        interaction: discord.Interaction | None,
        *,
        followup: Callable[[], dict[str, Any]],
        channel: Callable[[], dict[str, Any]],
        upload_bytes: int,
        what: str,
    ) -> discord.Message:
        """Post the job's message (as a followup while the interaction lasts, else in the channel),
        each try answered within the timeout its size allows, network faults retried."""
        post = _Post(
            followup=followup,
            channel=channel,
            timeout_s=self.timeouts.for_upload(upload_bytes),
            is_ours=lambda found: is_result_of(found, job.id),
        )
        return await retry_transient(
            lambda: self._send(job, interaction, post), delays_s=self.retry_delays_s, what=what
        )

    async def _takes_files(
        self, made: list[tuple[Job, GenerationResult]], pictures: list[bytes | None], limit: int
    ) -> tuple[list[Attachment], dict[int, str], list[str]]:
        """Each take's audio (within its share of one message) and picture; the format each take is
        posted in; a note for each re-encoded one."""
        room = REQUEST_LIMIT_BYTES - REQUEST_OVERHEAD_BYTES - sum(len(picture or b"") for picture in pictures)
        share = min(limit, room // len(made))
        shared = share < limit
        files: list[Attachment] = []
        formats: dict[int, str] = {}
        notes: list[str] = []
        for (job, result), picture in zip(made, pictures, strict=True):
            assert job.take is not None
            path, posted_format, note = await self.choose_file(
                job,
                result,
                share,
                limit_name="each take's share of one message" if shared else "this server's upload limit",
            )
            formats[job.id] = posted_format
            if note:
                notes.append(f"Take {job.take.number}: {note}")
            if path is not None:
                files.append(Attachment(f"musicgen-{job.id}.{posted_format}", path=path))
            if picture is not None:
                files.append(Attachment(f"musicgen-{job.id}.png", data=picture))
        return files, formats, notes

    async def post_failure(
        self, job: Job, text: str, interaction: discord.Interaction | None, *, ephemeral: bool
    ) -> None:
        """Tell the requester what went wrong (ephemerally while the token lives, else in the channel)."""
        mentions = discord.AllowedMentions(users=[discord.Object(job.user_id)])

        def is_this_notice(found: discord.Message) -> bool:
            metadata = found.interaction_metadata
            return (
                interaction is not None
                and metadata is not None
                and metadata.id == interaction.id
                and (found.content == text)
            )

        post = _Post(
            followup=lambda: {"content": text, "ephemeral": ephemeral},
            channel=lambda: {
                "content": f"<@{job.user_id}> job #{job.id}: {text}",
                "allowed_mentions": mentions,
                "nonce": f"job-{job.id}-failed",
            },
            timeout_s=self.timeouts.call_s,
            is_ours=None if ephemeral else is_this_notice,
        )
        try:
            await retry_transient(
                lambda: self._send(job, interaction, post),
                delays_s=self.retry_delays_s,
                what=f"job {job.id}: telling the requester it failed",
            )
        except DISCORD_REQUEST_ERRORS as error:
            logger.warning(
                "could not tell <@%s> that job %s failed: %s", job.user_id, job.id, describe_fault(error)
            )

    async def deliver(
        self, send: Callable[[], Awaitable[discord.Message]], *, upload_bytes: int, what: str
    ) -> discord.Message:
        """A post a feature makes its own way (a jam's turn, its final piece) through the same path as
        results: each try answered within the timeout its size allows, network faults retried.

        `send` builds its message afresh (files are consumed by one upload) and, in a channel, carries
        a nonce, so a retry whose answer was lost returns the message already made.
        """
        return await retry_transient(
            lambda: answer_within(self.timeouts.for_upload(upload_bytes), send),
            delays_s=self.retry_delays_s,
            what=what,
        )

    async def _send(self, job: Job, interaction: discord.Interaction | None, post: _Post) -> discord.Message:
        if interaction is not None and post.followup_tried and post.is_ours is not None:
            earlier = await self._find_lost_followup(job, interaction, post.is_ours)
            if earlier is not None:
                logger.info("job %s: the last attempt was posted after all (message %s)", job.id, earlier.id)
                return earlier
        if interaction is not None and not interaction.is_expired():
            try:
                return await answer_within(
                    post.timeout_s, lambda: interaction.followup.send(wait=True, **post.followup())
                )
            except TRANSIENT_DISCORD_ERRORS:
                post.followup_tried = True  # no answer, or a 5xx: the message may exist all the same
                raise
            except discord.HTTPException as error:
                if not is_dead_token_error(error):
                    raise
                logger.info(
                    "job %s: interaction token no longer usable (%s); posting in the channel", job.id, error
                )
        return await answer_within(post.timeout_s, lambda: self.channel(job).send(**post.channel()))

    async def _find_lost_followup(
        self, job: Job, interaction: discord.Interaction, is_ours: Callable[[discord.Message], bool]
    ) -> discord.Message | None:
        """The bot's message that an earlier followup made although its answer was lost, if any.

        Only messages newer than the interaction are read (its id is a snowflake of when it was made).
        Without Read Message History there is no knowing: the post is made again (twice is better than
        never).
        """
        me = self._client.user

        async def search() -> discord.Message | None:
            async for message in self.channel(job).history(
                limit=LOST_FOLLOWUP_SEARCH_LIMIT, after=discord.Object(interaction.id), oldest_first=False
            ):
                if me is not None and message.author.id == me.id and is_ours(message):
                    return message
            return None

        try:
            return await answer_within(self.timeouts.call_s, search)
        except discord.Forbidden as error:
            logger.warning(
                "job %s: cannot read the channel to see whether the last attempt was posted (%s); "
                "posting again",
                job.id,
                error,
            )
            return None
