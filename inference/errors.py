"""Exceptions shared by the engine, the worker process and its client.

They live in a module without torch so that the bot process, which imports `inference.backends.local` and
never loads torch, can catch exactly the classes the engine raises.
"""

from __future__ import annotations


class GenerationCancelled(Exception):
    """The job was cancelled (by its owner, an admin, or the client shutting down)."""


class WorkerCrashed(RuntimeError):
    """The worker process running the job died (killed, out of memory, segfault).

    `running_jobs`: how many jobs it was running together when it died (any of them may have caused it).
    """

    def __init__(self, message: str, *, running_jobs: int = 1) -> None:
        super().__init__(message)
        self.running_jobs = running_jobs


class WorkerStartError(RuntimeError):
    """A worker process could not start (bad settings, import error, no device)."""


class GenerationFailed(RuntimeError):
    """The engine failed on a job for a reason that is not the request's fault (a bug, a full disk)."""


# A refusal can carry details meant for the bot owner (configuration keys, paths, exception text)
# after this mark. Its text crosses the process boundary as is; the bot shows the part before the
# mark to members and the whole to the log and to members who run the server. The CLI, used by
# the owner, prints it whole.
OWNER_DETAILS_MARK = "\n\nFor the bot owner: "


def with_owner_details(member_text: str, owner_details: str) -> str:
    """One message: a short sentence for the member, then the details the owner needs to fix it."""
    return f"{member_text}{OWNER_DETAILS_MARK}{owner_details}"
