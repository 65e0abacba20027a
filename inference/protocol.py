"""Every message that crosses the process boundary between the bot (or CLI) and an inference worker.

The protocol is closed: the worker and its client exchange these classes over a multiprocessing
connection and nothing else (no exceptions, no engine objects). All of them are plain picklable
data, and every kind of a message is an enum, not a free string.

A client submits a batch of jobs (`SubmitBatch`, one job is a batch of one); the worker answers
each job of it on its own: `Started`, `Progress`..., then exactly one `GenerationResult` or
`GenerationError`, sent the moment that job ends. `KernelsChosen` tells which kernels a model's
decoder took, the first time the worker runs that model. `Cancel` names one job: the others of its batch go
on. A `SubmitBatch` with `join` set joins the batch the worker is running (continuous batching).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from inference.request import GenerationRequest, OutputFormat


class ErrorKind(enum.StrEnum):
    """Why a job ended without a result; the client raises a different exception for each."""

    # The person can fix the request (a RequestError in the engine); the message says how.
    REQUEST = "request"
    # Cancelled by its owner, an admin, or the worker shutting down.
    CANCELLED = "cancelled"
    # Our fault (a bug, a full disk): the message is for the log and the bot's owner.
    INTERNAL = "internal"


# -- client → worker ------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchJob:
    """One job of a batch: its id (which names its output file) and its validated request."""

    job_id: str
    request: GenerationRequest


@dataclass(frozen=True)
class SubmitBatch:
    """Jobs the worker runs together in one batch (one engine call); a single job is a batch of one."""

    jobs: tuple[BatchJob, ...]
    # Where the worker writes the finished files (a folder in the data directory).
    output_dir: str
    # Join the batch the worker is running, between two decoder steps, when the jobs can share it
    # (the same `batch_key`); else, or when none is running, run as the next batch.
    join: bool = False

    @property
    def job_ids(self) -> tuple[str, ...]:
        return tuple(job.job_id for job in self.jobs)


@dataclass(frozen=True)
class Cancel:
    """Cancel one job, waiting or running; the rest of its batch is not disturbed."""

    job_id: str


@dataclass(frozen=True)
class Shutdown:
    pass


# -- worker → client ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ready:
    """Sent once the worker has started and knows its device."""

    device: str
    dtype: str


@dataclass(frozen=True)
class StartupFailed:
    """Sent instead of `Ready` when the worker cannot build its engine."""

    message: str
    details: str  # the child's traceback, for the log


@dataclass(frozen=True)
class KernelsChosen:
    """Sent when the worker first runs a model: the kernels of its decoder's matrix products and how
    they were chosen (`[engine] cpu_matmul`), in a few words: "onednn-packed (measured)"."""

    model_version: str
    kernels: str


@dataclass(frozen=True)
class Started:
    job_id: str


@dataclass(frozen=True)
class Progress:
    job_id: str
    steps_done: int
    steps_total: int


@dataclass(frozen=True)
class GenerationResult:
    job_id: str
    output_path: str
    output_format: OutputFormat
    seed: int
    sample_rate: int
    channels: int
    duration_s: float  # length of the written audio
    # Named phases in seconds: "load", "prepare", "generate", "decode", "write", "total".
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class GenerationError:
    job_id: str
    message: str
    kind: ErrorKind = ErrorKind.INTERNAL


WorkerCommand = SubmitBatch | Cancel | Shutdown
WorkerEvent = Ready | StartupFailed | KernelsChosen | Started | Progress | GenerationResult | GenerationError
# The events that end a job: each job of a batch gets exactly one.
JobOutcome = GenerationResult | GenerationError
