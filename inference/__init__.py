"""MusicGen inference: the request type, the engine, the worker process and its client.

Never imports discord: the bot depends on this package, not the other way round.
"""

from inference.request import GenerationRequest, RequestError

__all__ = ["GenerationRequest", "RequestError"]
