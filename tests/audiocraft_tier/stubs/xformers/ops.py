"""The part of `xformers.ops` that audiocraft's attention touches with the torch attention backend."""

from __future__ import annotations

from typing import Any

import torch

# xformers.ops.unbind has torch.unbind's contract (it only adds a faster backward).
unbind = torch.unbind


class LowerTriangularMask:
    """audiocraft only uses an instance as a 'causal attention' marker with the torch backend."""


def memory_efficient_attention(*args: Any, **kwargs: Any) -> torch.Tensor:
    raise NotImplementedError("the xformers kernel is not available in the audiocraft test tier")
