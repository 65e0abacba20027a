"""The one way in for every job: every gate, in one order, before anything public is made.

Every entry point (`/generate`, `/replay`, the buttons under a result, the context menu, replies
that mention the bot, `/jam start`, `/jam add`, mentions in a jam thread) describes what it asks
for as a `JobAsk` and calls `Admission.check` before it defers publicly, opens a thread or posts
anything; a refusal is a `RequestError`, which each entry point answers privately (or, for a reply,
in a reply). The gates, in order:

1. the bot takes jobs at all (not restarting, disk not nearly full);
2. the channel is one the server lets the bot work in (`/musicgen-settings channel`);
3. the feature is switched on here (`replies`, `jams`);
4. the member's daily quota has room for the jobs asked;
5. the member's and the server's queue caps have room (a jam turn waiting for its place counts);
6. the bot may post what it will post there (files and embeds; a thread for a jam).

Only then is a job row made, by `admit_and_queue`, which checks the caps and the quota again under
the admission lock: a download or a modal gives others time to take the last place. The takes of
one request (`/generate takes:N`) count as N jobs at every gate and are admitted, written and queued
together under that lock, or refused together: never some of them.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Protocol

import discord

from bot.pipeline.dispatcher import JobDispatcher
from bot.pipeline.scheduler import FairScheduler
from bot.storage.jams import JamStore
from bot.storage.jobs import ContinuationSource, Job, JobOrigin, JobStore
from bot.storage.server_controls import Feature, ServerControls
from inference.catalogue import ModelCatalogue
from inference.request import MAX_SEED, TAKES_DEFAULTS, GenerationRequest, RequestError, Takes


class AdmissionHost(Protocol):
    """What admission needs of the bot (its services), named here so this module need not import it."""

    @property
    def accepting_jobs(self) -> bool: ...
    @property
    def admission_lock(self) -> asyncio.Lock: ...
    @property
    def controls(self) -> ServerControls: ...
    @property
    def jam_store(self) -> JamStore: ...
    @property
    def scheduler(self) -> FairScheduler: ...
    @property
    def jobs(self) -> JobStore: ...
    @property
    def dispatcher(self) -> JobDispatcher: ...
    @property
    def catalogue(self) -> ModelCatalogue: ...

    def low_disk_refusal(self) -> str | None: ...


MIB = 1024 * 1024

# What the bot needs where it posts a result: the audio is a file, its details an embed.
RESULT_PERMISSIONS = ("attach_files", "embed_links")
THREAD_PERMISSIONS = ("create_public_threads", "send_messages_in_threads")
PERMISSION_NAMES = {
    "send_messages": "Send Messages",
    "send_messages_in_threads": "Send Messages in Threads",
    "attach_files": "Attach Files",
    "embed_links": "Embed Links",
    "create_public_threads": "Create Public Threads",
}
FEATURE_OFF_TEXT: dict[str, str] = {
    "replies": "Continuing by reply is switched off on this server; the context menu still works.",
    "jams": "Jams are switched off on this server (`/musicgen-settings jams`).",
}


@dataclass(frozen=True)
class JobAsk:
    """Who asks for how many jobs, where, through which switchable feature, and what the bot may do there."""

    guild_id: int
    channel_id: int
    user_id: int
    channel_name: str = "this channel"
    # A thread's parent: the allow-list may name either.
    parent_id: int | None = None
    feature: Feature | None = None
    jobs: int = 1
    # The bot's permissions where it will post (None: not known, not checked).
    bot_permissions: discord.Permissions | None = None
    # A jam opens a thread here and posts in it.
    opens_thread: bool = False

    @classmethod
    def of_interaction(
        cls, interaction: discord.Interaction, *, feature: Feature | None = None, jobs: int = 1
    ) -> JobAsk:
        assert interaction.guild_id is not None and interaction.channel_id is not None
        return cls(
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id,
            user_id=interaction.user.id,
            channel_name=getattr(interaction.channel, "name", None) or "this channel",
            parent_id=_parent_of(interaction.channel),
            feature=feature,
            jobs=jobs,
            bot_permissions=interaction.app_permissions,
        )

    @classmethod
    def of_message(cls, message: discord.Message, *, feature: Feature | None = None) -> JobAsk:
        """A job asked for in a message (a reply or a mention): the bot posts in that channel."""
        assert message.guild is not None
        channel = message.channel
        permissions = None
        if isinstance(channel, discord.abc.GuildChannel | discord.Thread):
            permissions = channel.permissions_for(message.guild.me)
        return cls(
            guild_id=message.guild.id,
            channel_id=channel.id,
            user_id=message.author.id,
            channel_name=getattr(channel, "name", None) or "this channel",
            parent_id=_parent_of(channel),
            feature=feature,
            bot_permissions=permissions,
        )


def _takes_note(ask: JobAsk) -> str:
    """Why a request of several takes needs several places."""
    return f" You asked for {ask.jobs} takes, and each counts as a job." if ask.jobs > 1 else ""


def _parent_of(channel: object) -> int | None:
    return channel.parent_id if isinstance(channel, discord.Thread) else None


class Admission:
    """Every gate a job passes, and the one place a job row is made and queued."""

    def __init__(self, bot: AdmissionHost) -> None:
        self.bot = bot

    # -- the gates --------------------------------------------------------------------------------
    async def check(self, ask: JobAsk) -> None:
        """Raise `RequestError` with what to do if any gate refuses `ask`; in the order of the module doc."""
        self.check_accepting_jobs()
        await self.check_channel(ask)
        await self.check_feature(ask)
        await self.check_quota(ask)
        await self.check_caps(ask)
        self.check_permissions(ask)

    def check_accepting_jobs(self) -> None:
        if not self.bot.accepting_jobs:
            raise RequestError(
                "The bot is restarting and is not taking new jobs right now. Try again in a minute."
            )
        if (refusal := self.bot.low_disk_refusal()) is not None:
            raise RequestError(refusal)

    async def check_channel(self, ask: JobAsk) -> None:
        allowed = await self.bot.controls.channels(ask.guild_id)
        asked_in = {ask.channel_id} | ({ask.parent_id} if ask.parent_id else set())
        if allowed and not asked_in & set(allowed):
            where = ", ".join(f"<#{channel_id}>" for channel_id in allowed)
            raise RequestError(f"In this server I make music only in {where}. Try the command there.")

    async def check_feature(self, ask: JobAsk) -> None:
        if ask.feature is not None and not await self.bot.controls.feature_enabled(ask.guild_id, ask.feature):
            raise RequestError(FEATURE_OFF_TEXT[ask.feature])

    async def check_quota(self, ask: JobAsk) -> None:
        """The member's jobs today, their turns still waiting in jams, and the ones asked for now."""
        quota = await self.bot.controls.daily_quota(ask.guild_id)
        if quota is None:
            return
        made = await self.bot.controls.jobs_today(ask.guild_id, ask.user_id)
        waiting, _ = await self.bot.jam_store.waiting_turn_counts(ask.guild_id, ask.user_id)
        if made + waiting + ask.jobs > quota:
            if ask.jobs > 1:
                raise RequestError(
                    f"You have made {made + waiting} job(s) here today and asked for {ask.jobs} takes, which "
                    f"count as {ask.jobs} jobs: this server's daily limit is {quota}. Ask for fewer takes, or "
                    "wait until midnight UTC."
                )
            raise RequestError(
                f"You have made {quota} job(s) here today (counting jam turns waiting for their place), "
                "this server's daily limit. It resets at midnight UTC."
            )

    async def check_caps(self, ask: JobAsk) -> None:
        """The per-member and per-server caps, counting jam turns that wait for their place as jobs."""
        scheduler = self.bot.scheduler
        mine, here = await self.bot.jam_store.waiting_turn_counts(ask.guild_id, ask.user_id)
        member_pending = scheduler.pending_for_user(ask.guild_id, ask.user_id) + mine
        cap = scheduler.limits.max_pending_per_user
        if member_pending + ask.jobs > cap:
            turns = " and jam turns" if mine else ""
            raise RequestError(
                f"You already have {member_pending} job(s){turns} queued or running here (the limit is "
                f"{cap}). Wait for one to finish, or `/cancel` one.{_takes_note(ask)}"
            )
        guild_pending = scheduler.pending_for_guild(ask.guild_id) + here
        guild_cap = scheduler.guild_limit(ask.guild_id)
        if guild_pending + ask.jobs > guild_cap:
            raise RequestError(
                f"This server's queue is full ({guild_pending} jobs queued or running, the limit is "
                f"{guild_cap}). Try again when some have finished.{_takes_note(ask)}"
            )

    def check_permissions(self, ask: JobAsk) -> None:
        if ask.bot_permissions is None:
            return
        needed = RESULT_PERMISSIONS + (THREAD_PERMISSIONS if ask.opens_thread else ())
        missing = [PERMISSION_NAMES[name] for name in needed if not getattr(ask.bot_permissions, name)]
        if not missing:
            return
        names = " and ".join(f"**{name}**" for name in missing)
        what = "run a jam" if ask.opens_thread else "post music"
        raise RequestError(
            f"I can't {what} in #{ask.channel_name}: I need the {names} permission"
            f"{'s' if len(missing) > 1 else ''} there. Someone with Manage Channels can grant "
            f"{'them' if len(missing) > 1 else 'it'} to my role in the channel's settings → Permissions."
        )

    # -- what the request asks for ------------------------------------------------------------------
    def check_model_available(self, request: GenerationRequest, default_model: str) -> None:
        catalogue = self.bot.catalogue
        if not catalogue.is_configured(request.model_version):
            raise RequestError(
                "No fine-tuned model is configured on this bot. Pick another model_version "
                f"(the default here is {default_model})."
            )
        if (
            request.input_audio is not None
            and not request.continuation
            and catalogue.cannot_follow_melody(request.model_version)
        ):
            raise RequestError(
                f"The {request.model_version} model cannot follow a melody. Use model_version melody to follow "
                "your clip's melody, or set continuation to True to continue the clip instead."
            )

    # -- the job row ---------------------------------------------------------------------------------
    async def queue_for_interaction(
        self,
        interaction: discord.Interaction,
        request: GenerationRequest,
        *,
        input_audio_filename: str | None,
        replay_of: int | None = None,
        continues: ContinuationSource | None = None,
        takes: Takes = TAKES_DEFAULTS,
    ) -> Job:
        """`admit_and_queue` for a command, a button or a form: the job answers through its interaction."""
        assert interaction.guild_id is not None and interaction.channel_id is not None
        origin = JobOrigin(
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id,
            user_id=interaction.user.id,
            application_id=interaction.application_id,
            interaction_id=interaction.id,
        )
        return await self.admit_and_queue(
            origin,
            request,
            interaction=interaction,
            input_audio_filename=input_audio_filename,
            replay_of=replay_of,
            continues=continues,
            takes=takes,
        )

    async def admit_and_queue(
        self,
        origin: JobOrigin,
        request: GenerationRequest,
        *,
        interaction: discord.Interaction | None,
        input_audio_filename: str | None,
        replay_of: int | None = None,
        continues: ContinuationSource | None = None,
        status_message_id: int | None = None,
        holds_place: bool = False,
        takes: Takes = TAKES_DEFAULTS,
    ) -> Job:
        """Check the caps and quota again, insert the row and queue it, under the admission lock.

        `holds_place`: a jam turn that waited for its place; it passed every gate when it was asked
        for and has counted towards the caps since, so it is not refused now.

        `takes`: that many variations of the request, each a job of its own with its own seed
        (`Takes.seeds`). They count as that many jobs and are written and queued together (so they
        can share a batch), or refused together. Returns the first take's job.
        """
        seed_was_random = request.seed is None
        # Chosen here, not in the worker, so the row records it before the job runs and a retry
        # after a crash or restart makes the same music.
        requests = [
            request.replace(seed=secrets.randbelow(MAX_SEED + 1) if seed is None else seed)
            for seed in takes.seeds(request.seed)
        ]
        async with self.bot.admission_lock:
            if not holds_place:
                ask = JobAsk(
                    guild_id=origin.guild_id,
                    channel_id=origin.channel_id,
                    user_id=origin.user_id,
                    jobs=len(requests),
                )
                # Again under the lock: two quick commands must not both take the member's last place.
                await self.check_quota(ask)
                await self.check_caps(ask)
            if len(requests) == 1:
                jobs = [
                    await self.bot.jobs.create(
                        origin,
                        requests[0],
                        seed_was_random=seed_was_random,
                        input_audio_filename=input_audio_filename,
                        replay_of=replay_of,
                        continues=continues,
                        status_message_id=status_message_id,
                    )
                ]
            else:
                # Takes come from /generate alone: never a replay, a continuation of a post or a jam turn.
                assert replay_of is None and continues is None and status_message_id is None
                jobs = await self.bot.jobs.create_takes(
                    origin,
                    requests,
                    seed_was_random=seed_was_random,
                    input_audio_filename=input_audio_filename,
                )
            # No await between these: the scheduler sees every take at once, to batch them together.
            for job in jobs:
                self.bot.dispatcher.add(job, interaction, status_message_id=status_message_id)
        return jobs[0]
