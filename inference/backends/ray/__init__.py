"""The Ray back end: inference replicas as Ray actors on a cluster, behind the same `InferenceBackend`.

`[worker] backend = "ray"` makes the bot use `RayInferenceClient` (the client side, `client`)
instead of the local worker processes. Each replica is one `InferenceReplica` actor (the replica
side, `replica`) holding one engine, whose models stay cached between jobs.

Why actors and not Ray Serve: Serve routes independent HTTP-style requests to any replica and
batches them itself (`@serve.batch`), but our batches are made by the bot's fair scheduler, every
job of a batch must be followed on its own (progress, cancel one job without disturbing the others),
and a cancel must reach the very replica that runs the job while that replica is busy. A threaded
actor (`max_concurrency` > 1) gives exactly that: `run_batch` runs in one of its threads while
`events` (the client's progress poll) and `cancel` are served by others, and the handle names the
replica.

Importing this package imports ray (the bot does so only when the back end is "ray") but never
torch: the engine is imported inside the replica's process.
"""

from inference.backends.ray.client import RayInferenceClient
from inference.backends.ray.replica import FinishedFile, InferenceReplica, InputFile

__all__ = ["FinishedFile", "InferenceReplica", "InputFile", "RayInferenceClient"]
