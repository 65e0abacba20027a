"""The takes of one request (`/generate takes:N`) on their way to the channel: posted together.

Each take is a job like any other: its own row and seed, its place in a batch, its retry after a
crash, its own `/cancel`. Only its end differs. A take's audio is held until every take of its
request has ended (made, failed or cancelled); then the ones made are posted in one message, which
names the others (`ResultPoster.post_takes`), so a take that fails never loses the rest. The request
has one status message, its first take's.

What is held lives in memory: a shutdown puts the takes whose audio was held back in the queue, and
they are made again after the restart with their own seeds (the same music), as any job a restart
interrupted.
"""

from __future__ import annotations

from bot.replies import clip_text
from bot.storage.jobs import Job, JobStatus, Take
from inference.protocol import GenerationResult

# How much of a failed take's reason its line in the takes' message shows.
REASON_CHARS = 200

MadeTake = tuple[Job, GenerationResult]


class TakeGroups:
    """Which takes of each request are still followed, and the audio of the ones already made."""

    def __init__(self) -> None:
        # By group (the first take's job id): the takes followed in this run that have not ended, and
        # the takes made so far; by job id, every take followed in this run.
        self._waiting: dict[int, set[int]] = {}
        self._made: dict[int, dict[int, MadeTake]] = {}
        self._take_of: dict[int, Take] = {}

    def follow(self, job: Job) -> None:
        """A take was queued (or resumed after a restart): its request's message waits for it."""
        if job.take is None:
            return
        self._take_of[job.id] = job.take
        self._waiting.setdefault(job.take.group, set()).add(job.id)

    def take_of(self, job_id: int) -> Take | None:
        """The job's place among its request's takes, while it is followed (None: a job made alone)."""
        return self._take_of.get(job_id)

    def hold(self, job: Job, result: GenerationResult) -> None:
        """A take's audio is made: kept until its request's other takes have ended too."""
        assert job.take is not None
        self._made.setdefault(job.take.group, {})[job.id] = (job, result)

    def held(self) -> list[MadeTake]:
        """Every take made and not yet posted (what a shutdown puts back in the queue)."""
        return [made for takes in self._made.values() for made in takes.values()]

    def ended(self, job_id: int, take: Take) -> bool:
        """The take has ended (made, failed or cancelled). True once for each request: when the last
        of its takes followed here ends, and they are to be posted."""
        waiting = self._waiting.get(take.group)
        if waiting is None or job_id not in waiting:
            return False
        waiting.discard(job_id)
        if waiting:
            return False
        del self._waiting[take.group]
        return True

    def release(self, group: int) -> tuple[dict[int, MadeTake], set[int]]:
        """The takes made, by job id, and every take followed in this run, of a request whose takes
        have all ended; forgets them."""
        followed = {job_id for job_id, take in self._take_of.items() if take.group == group}
        for job_id in followed:
            del self._take_of[job_id]
        return self._made.pop(group, {}), followed


def made_in_order(rows: list[Job], made: dict[int, MadeTake]) -> list[MadeTake]:
    """The takes made, in take order (`rows`: every take of the request, as `takes_of` reads them)."""
    return [made[row.id] for row in rows if row.id in made]


def done_text(take: Take, made: list[MadeTake]) -> str:
    """The request's status message once its takes are made (some of them, at least)."""
    seeds = ", ".join(f"`{result.seed}`" for _, result in made)
    if len(made) == take.count:
        return f"✅ Jobs {take.span} are done ({take.count} takes, seeds {seeds})."
    return f"✅ Jobs {take.span}: {len(made)} of {take.count} takes are done (seeds {seeds})."


def missing_lines(rows: list[Job], made: dict[int, MadeTake]) -> list[str]:
    """One line for each take that was not made, for the message that posts the others.

    A reason the member could fix (a request the worker refused) is theirs alone: the line points to
    `/history`, where they read it, instead of showing it to the channel.
    """
    lines = []
    for row in rows:
        if row.id in made or row.take is None or row.is_pending or row.status is JobStatus.DONE:
            continue
        name = f"Take {row.take.number} (job #{row.id})"
        if row.status is JobStatus.CANCELLED:
            lines.append(f"{name} was cancelled.")
        elif row.failed_by == "member":
            lines.append(f"{name} could not be made: `/history` says why.")
        else:
            lines.append(f"{name} failed: {clip_text(row.error or 'no reason was recorded.', REASON_CHARS)}")
    return lines


def all_cancelled(rows: list[Job]) -> bool:
    return all(row.status is JobStatus.CANCELLED for row in rows)


def cancelled_text(take: Take) -> str:
    return f"🚫 Jobs {take.span} ({take.count} takes) were cancelled."


def failure_text(take: Take, rows: list[Job]) -> tuple[str, bool]:
    """Why none of a request's takes was made, and whether that is for the member alone (every
    failure was a request they can fix)."""
    failed = [row for row in rows if row.status is JobStatus.FAILED]
    reasons = list(dict.fromkeys(row.error or "no reason was recorded." for row in failed))
    if len(reasons) == 1:
        text = f"none of its {take.count} takes could be made. {reasons[0]}"
    else:
        listed = " ".join(
            f"Take {row.take.number}: {clip_text(row.error or 'no reason was recorded.', REASON_CHARS)}"
            for row in failed
            if row.take is not None
        )
        text = f"none of its {take.count} takes could be made. {listed}"
    return text, bool(failed) and all(row.failed_by == "member" for row in failed)
