"""Deadlines for running jobs: a worker that takes far longer than its job explains is presumed hung.

A stalled hub download, a CUDA hang or demucs on a long clip keeps a job 'running' forever and,
with one worker, stalls every server. Each job gets two limits:

- a deadline from its size: `base_s` (model loading, a first download or conversion) plus
  `per_audio_second_s` for every second of audio it makes or reads (a continuation's clip counts the
  model's 30 s window; a melody counts 30 s for every window of the piece, each of which separates
  and reads its own stretch of it), generous enough for the largest model on a CPU. A piece longer
  than the window counts every second it makes: its windows are made one after the other;
- once it has reported progress, a stall limit: no new step for `stall_s` means the decoding loop
  stopped (a step takes well under a second on a GPU, a few on a CPU).

A job's limits count from the moment its worker takes it (not while it waits for a worker). A job in
a batch decodes only as fast as the whole batch, so each gets the longest job's deadline.

When a limit is missed the watchdog logs it and kills the job's worker; the inference client then
reports a crash, and the dispatcher retries or fails the job as for any crash, with `missed(job)` to
tell the member that it took too long rather than that it crashed.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from inference.request import GenerationRequest
from inference.windows import DEFAULT_EXTEND_STRIDE_S, RELEASED_MODEL_WINDOW_S, window_count

logger = logging.getLogger(__name__)

KillWorker = Callable[[str], "bool | Awaitable[bool]"]


@dataclass(frozen=True)
class DeadlinePolicy:
    base_s: float = 600.0
    per_audio_second_s: float = 60.0
    stall_s: float = 300.0
    # `[engine] extend_stride_s`: how many windows a melody is read in.
    extend_stride_s: float = DEFAULT_EXTEND_STRIDE_S

    def deadline_s(self, request: GenerationRequest) -> float:
        """How long `request` may run in all before its worker is presumed hung."""
        audio_s = float(request.duration)
        if request.input_audio is not None:
            audio_s += self.clip_seconds(request)
        return self.base_s + self.per_audio_second_s * audio_s

    def clip_seconds(self, request: GenerationRequest) -> float:
        """Seconds of its clip a job decodes, encodes or separates: a window's for a continuation (its
        clip is shorter) and encode-decode, a window's per window of the piece for a melody (demucs
        and the chroma run on each window's stretch of it)."""
        if request.continuation or request.model_version == "encode-decode":
            return RELEASED_MODEL_WINDOW_S
        return RELEASED_MODEL_WINDOW_S * window_count(request.duration, stride_s=self.extend_stride_s)


def seconds_text(seconds: float) -> str:
    """600 -> "600 s", 0.5 -> "0.5 s": whole seconds, or a tenth for the short limits tests use."""
    return f"{seconds:.1f}".rstrip("0").rstrip(".") + " s"


@dataclass
class _Watch:
    deadline: asyncio.TimerHandle
    deadline_s: float
    started_at: float
    stall: asyncio.TimerHandle | None = None


class JobWatchdog:
    """Arms a deadline per running job and kills the worker of a job that misses it."""

    def __init__(self, kill_worker: KillWorker, policy: DeadlinePolicy | None = None) -> None:
        self._kill_worker = kill_worker
        self.policy = policy or DeadlinePolicy()
        self._watches: dict[str, _Watch] = {}
        self._missed: dict[str, str] = {}
        self._kills: set[asyncio.Task[None]] = set()

    def start(self, job_id: str, request: GenerationRequest, *, deadline_s: float | None = None) -> float:
        """A worker took the job: arm its deadline (`deadline_s`, e.g. its batch's, or its own size's);
        returns it in seconds."""
        self.finish(job_id)
        if deadline_s is None:
            deadline_s = self.policy.deadline_s(request)
        loop = asyncio.get_running_loop()
        reason = f"it ran past its deadline of {seconds_text(deadline_s)}"
        timer = loop.call_later(deadline_s, self._expire, job_id, reason)
        self._watches[job_id] = _Watch(timer, deadline_s, loop.time())
        return deadline_s

    def progress(self, job_id: str) -> None:
        """The job reported a step: the stall limit counts from now."""
        watch = self._watches.get(job_id)
        if watch is None:
            return
        if watch.stall is not None:
            watch.stall.cancel()
        reason = f"it made no progress for {seconds_text(self.policy.stall_s)}"
        watch.stall = asyncio.get_running_loop().call_later(self.policy.stall_s, self._expire, job_id, reason)

    def finish(self, job_id: str) -> None:
        """The job ended (any way): disarm its limits."""
        watch = self._watches.pop(job_id, None)
        if watch is None:
            return
        watch.deadline.cancel()
        if watch.stall is not None:
            watch.stall.cancel()

    def missed(self, job_id: str) -> str | None:
        """Why the watchdog killed this job's worker ("it ran past its deadline of 900 s"), if it did;
        asking forgets it."""
        return self._missed.pop(job_id, None)

    @property
    def watching(self) -> int:
        return len(self._watches)

    def _expire(self, job_id: str, reason: str) -> None:
        watch = self._watches.get(job_id)
        self.finish(job_id)
        self._missed[job_id] = reason
        if watch is None:  # pragma: no cover - a fired timer's watch is still there
            return
        elapsed_s = asyncio.get_running_loop().time() - watch.started_at
        logger.error(
            "JOB DEADLINE: job %s %s (running for %s; deadline %s, stall limit %s); "
            "killing its worker, presumed hung",
            job_id,
            reason.removeprefix("it "),
            seconds_text(elapsed_s),
            seconds_text(watch.deadline_s),
            seconds_text(self.policy.stall_s),
        )
        task = asyncio.ensure_future(self._kill(job_id))
        self._kills.add(task)
        task.add_done_callback(self._kills.discard)

    async def _kill(self, job_id: str) -> None:
        try:
            outcome = self._kill_worker(job_id)
            killed = await outcome if inspect.isawaitable(outcome) else outcome
        except Exception:
            logger.exception("job %s: could not kill its worker", job_id)
            return
        if not killed:
            # Finished at the last moment, or no worker had it: nothing to report for it.
            self._missed.pop(job_id, None)
            logger.warning("job %s: no worker was running it any more", job_id)
