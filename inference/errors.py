"""Exceptions shared by the engine, the worker process and its client.

They live in a module without torch so that the bot process, which imports `inference.client` and
never loads torch, can catch exactly the classes the engine raises.
"""

from __future__ import annotations


class GenerationCancelled(Exception):
    """The job was cancelled (by its owner, an admin, or the client shutting down)."""


class WorkerCrashed(RuntimeError):
    """The worker process running the job died (killed, out of memory, segfault)."""


class WorkerStartError(RuntimeError):
    """A worker process could not start (bad settings, import error, no device)."""


class GenerationFailed(RuntimeError):
    """The engine failed on a job for a reason that is not the request's fault (a bug, a full disk)."""
