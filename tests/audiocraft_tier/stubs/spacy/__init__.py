"""Stand-in for spacy in the audiocraft test tier (see ../README.md)."""

from __future__ import annotations

from typing import Any


def load(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("spacy is not installed in the audiocraft test tier")
