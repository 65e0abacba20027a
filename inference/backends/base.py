"""What the bot needs from an inference back end, whichever runs the workers.

`inference.backends.local.InferenceClient` (worker processes on this machine) and
`inference.backends.ray.RayInferenceClient` (replicas on a Ray cluster) both fit this protocol, so the
dispatcher and the bot are written once against it. Importing this module imports neither back end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from inference.backends.job_tracking import JobSubmission, ProgressCallback
    from inference.protocol import GenerationResult
    from inference.request import GenerationRequest


class InferenceService(Protocol):
    @property
    def worker_count(self) -> int: ...

    @property
    def idle_workers(self) -> int: ...

    @property
    def busy_workers(self) -> int: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def submit(
        self,
        job_id: str,
        request: GenerationRequest,
        output_dir: str | Path,
        *,
        on_progress: ProgressCallback | None = None,
    ) -> GenerationResult: ...

    def submit_batch(
        self, jobs: Sequence[JobSubmission], output_dir: str | Path
    ) -> list[asyncio.Task[GenerationResult]]: ...

    def join_batch(
        self, running_job_ids: Sequence[str], jobs: Sequence[JobSubmission], output_dir: str | Path
    ) -> list[asyncio.Task[GenerationResult]]: ...

    async def cancel(self, job_id: str) -> bool: ...

    def kill_worker_of(self, job_id: str) -> bool: ...
