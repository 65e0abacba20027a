"""What the workers' fork server imports once, before it forks any worker (`inference.backends.local`).

Importing torch, transformers' MusicGen classes and the engine costs a process 5-10 s of CPU; a
worker forked from a server that holds them pays nothing for it, so a worker (and a replacement
after a crash) is ready in a fraction of a second and its first job starts at once. Only imports
here: nothing that runs a torch operation, starts a thread or touches a GPU, so forking stays safe.
"""

from __future__ import annotations

from transformers import (  # noqa: F401  (imported for the fork server's memory)
    AutoConfig,
    AutoTokenizer,
    DynamicCache,
    EncodecModel,
    EncoderDecoderCache,
    MusicgenForConditionalGeneration,
    MusicgenMelodyForConditionalGeneration,
    PreTrainedTokenizerFast,
    StaticCache,
    T5EncoderModel,
)

from inference.backends import worker  # noqa: F401
from inference.checkpoints import convert, loading  # noqa: F401
from inference.engine import musicgen_engine  # noqa: F401
