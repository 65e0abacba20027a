"""Which inference back end runs the workers: the bot asks here, by the name its config gives.

A back end's module is imported only once it is chosen: Ray is an optional extra, and the bot
process that runs local workers never imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from inference.backends.base import BackendName, BackendOptions, InferenceBackend

if TYPE_CHECKING:
    from inference.settings import EngineSettings

__all__ = ["backend_class", "create_backend"]


def backend_class(name: BackendName) -> type[InferenceBackend[Any]]:
    """The class of the back end called `name` ("local": worker processes, "ray": Ray replicas)."""
    if name == "local":
        from inference.backends.local import InferenceClient

        return InferenceClient
    if name == "ray":
        from inference.backends.ray import RayInferenceClient

        return RayInferenceClient
    raise ValueError(f'unknown inference back end {name!r} (expected "local" or "ray")')


def create_backend(settings: EngineSettings, options: BackendOptions) -> InferenceBackend[Any]:
    """The back end `options.backend` names, set up from the options (not started yet)."""
    return backend_class(options.backend).from_options(settings, options)
