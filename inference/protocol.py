"""The narrow, typed messages between the bot (or CLI) and an inference worker process.

Everything here is plain picklable data: the worker and its client exchange these over a
multiprocessing connection, and nothing else crosses the process boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from inference.request import GenerationRequest


# -- client → worker ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Submit:
    job_id: str
    request: GenerationRequest
    # Where the worker writes the finished file (a folder in the data directory).
    output_dir: str


@dataclass(frozen=True)
class Cancel:
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
    output_format: str
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
    # "request": the person can fix it (RequestError); "cancelled"; "internal": our fault.
    kind: str = "internal"


WorkerCommand = Submit | Cancel | Shutdown
WorkerEvent = Ready | Started | Progress | GenerationResult | GenerationError
