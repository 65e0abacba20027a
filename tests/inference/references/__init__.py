"""Outputs of audiocraft 1.3.0 itself, kept small in the repository, so that the main suite checks
our engine against audiocraft without audiocraft installed.

Each reference is one file, `<name>.pt`, written by scripts/make-audiocraft-references.py (run in the
audiocraft tier's virtualenv; its docstring says how they were made). A reference is made from
checkpoints the tests build themselves, with random weights drawn from explicitly seeded generators,
so both environments (the same torch and transformers, on any CPU with AVX2) build them bit for bit alike; the file records
each checkpoint's digest, and a test first checks that it rebuilt the same checkpoint.

A file holds {"checkpoints": {name: digest}, "cases": {case: {"codes": [codebooks, frames] int16,
"samples": [channels, ⌈samples / SAMPLE_STRIDE⌉] float32, "shape": [channels, samples]}},
"made_with": {package: version}}. Only every SAMPLE_STRIDE-th sample is kept: the codes pin the audio
down already, and a strided sample of every channel still shows any difference in decoding (a
channel swapped, a frame shifted, another codec).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

REFERENCE_DIR = Path(__file__).resolve().parent
# A prime stride, so the kept samples fall on every phase of EnCodec's 640-sample frames.
SAMPLE_STRIDE = 257


def reference_path(name: str) -> Path:
    return REFERENCE_DIR / f"{name}.pt"


def load_reference(name: str) -> dict[str, Any]:
    return dict(torch.load(reference_path(name), map_location="cpu", weights_only=True))


def save_reference(name: str, reference: dict[str, Any]) -> Path:
    path = reference_path(name)
    torch.save(reference, path)
    return path


def kept_samples(wav: torch.Tensor) -> torch.Tensor:
    """What a reference keeps of audio [channels, samples]: every SAMPLE_STRIDE-th sample."""
    return wav[..., ::SAMPLE_STRIDE].float().contiguous().clone()


def case_outcome(codes: torch.Tensor, wav: torch.Tensor) -> dict[str, Any]:
    """One case of a reference: codes [codebooks, frames] and audio [channels, samples]."""
    return {
        "codes": codes.to(torch.int16).contiguous().clone(),
        "samples": kept_samples(wav),
        "shape": list(wav.shape),
    }


def checkpoint_digest(folder: Path) -> str:
    """A digest of every weight a test checkpoint holds (its audiocraft export and the T5 and EnCodec
    beside it), tensor by tensor: equal digests mean bit-identical checkpoints."""
    digest = hashlib.sha256()
    for file in sorted(folder.rglob("*")):
        if file.suffix == ".bin":
            package = torch.load(file, map_location="cpu", weights_only=True)
            _digest_tensors(digest, file.relative_to(folder).as_posix(), package.get("best_state", {}))
        elif file.suffix == ".safetensors":
            from safetensors.torch import load_file

            _digest_tensors(digest, file.relative_to(folder).as_posix(), load_file(file))
    return digest.hexdigest()


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """A digest of a state dict, tensor by tensor (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    _digest_tensors(digest, "", tensors)
    return digest.hexdigest()


def _digest_tensors(digest: Any, where: str, tensors: dict[str, torch.Tensor]) -> None:
    for key in sorted(tensors):
        tensor = tensors[key].detach().contiguous().cpu()
        digest.update(f"{where}:{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
