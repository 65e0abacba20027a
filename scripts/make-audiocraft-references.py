#!/usr/bin/env python
"""Make the reference outputs in tests/inference/references/ with audiocraft 1.3.0 itself.

The main suite cannot import audiocraft (it pins torch 2.1), yet must show that our engine makes what
audiocraft makes. So audiocraft runs here, once, in the audiocraft tier's virtualenv, and what it makes
is kept in small files that the main suite compares our engine with.

How the references were made:
1. `scripts/install-audiocraft-tier.sh` set up `.venv-audiocraft`: audiocraft 1.3.0 on the project's
   own torch and transformers (its .pth file puts the project's packages on the path).
2. This script, run there with one torch thread on the CPU, builds each reference's test checkpoints
   (tiny audiocraft exports with random weights from explicitly seeded generators:
   `inference.checkpoints.random_models.make_test_model`), loads them with audiocraft's own loaders
   (tests/audiocraft_tier/audiocraft_models.py: only the T5 and the EnCodec are taken from the local
   folders beside the export, as there is no model hub here), generates every case of the reference
   with audiocraft's MusicGen API, and saves the codes and every 257th sample of the audio, with each
   checkpoint's digest (tests/inference/references/__init__.py describes the file).
3. The main suite rebuilds the same checkpoints, checks their digests, runs our engine on the same
   cases and compares (tests/inference/test_stereo.py); the tier compares against audiocraft live
   (tests/audiocraft_tier/test_stereo_against_audiocraft.py).

Usage, from the repository root:
    scripts/install-audiocraft-tier.sh
    .venv-audiocraft/bin/python scripts/make-audiocraft-references.py             # every reference
    .venv-audiocraft/bin/python scripts/make-audiocraft-references.py stereo_greedy

References, by name (each one function below, registered in REFERENCES):
- stereo_greedy: greedy stereo generation (text, continuation of a stereo and of a mono clip, melody
  of a stereo and of a mono clip) of two tiny stereo audiocraft exports (tests/inference/references/stereo.py).
- long_piece_greedy: greedy pieces longer than the model's window (5 s of text, a 0.5 s clip continued
  by 4 s) from a tiny export whose window is 2 s, extended with a 1 s stride
  (tests/inference/references/long_pieces.py; compared in tests/inference/test_long_pieces.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

import torch  # noqa: E402

from tests.inference.references import case_outcome, checkpoint_digest, save_reference  # noqa: E402


def made_with() -> dict[str, str]:
    """The versions a reference was made with (the checkpoints depend on torch and transformers)."""
    return {package: metadata.version(package) for package in ("audiocraft", "torch", "transformers")}


def make_stereo_greedy(workdir: Path) -> dict[str, Any]:
    from tests.audiocraft_tier.audiocraft_models import audiocraft_generates, load_audiocraft_musicgen
    from tests.inference.references import stereo

    checkpoints = stereo.build_checkpoints(workdir / "checkpoints")
    separator = stereo.MelodyStemStandIn()
    models = {
        name: load_audiocraft_musicgen(folder, workdir, separator=separator)
        for name, folder in checkpoints.items()
    }
    cases: dict[str, Any] = {}
    for name, case in stereo.CASES.items():
        clip = None
        if case.clip is not None:
            clip = stereo.read_clip(stereo.write_clip(case.clip, case.clip_seconds, workdir))
        codes, wav = audiocraft_generates(
            models[case.checkpoint],
            prompt=case.prompt,
            new_seconds=case.duration,
            guidance=stereo.GUIDANCE,
            melody=None if case.continuation else clip,
            continued=clip if case.continuation else None,
        )
        cases[name] = case_outcome(codes, wav)
        print(f"  {name}: codes {tuple(codes.shape)}, audio {tuple(wav.shape)}")
    return {
        "checkpoints": {name: checkpoint_digest(folder) for name, folder in checkpoints.items()},
        "cases": cases,
        "made_with": made_with(),
    }


def make_long_piece_greedy(workdir: Path) -> dict[str, Any]:
    from tests.audiocraft_tier.audiocraft_models import audiocraft_generates, load_audiocraft_musicgen
    from tests.inference.references import long_pieces

    folder = long_pieces.build_checkpoint(workdir / "checkpoint")
    musicgen = load_audiocraft_musicgen(folder, workdir)
    # MusicGen's constructor sets its default 18 s stride, which it refuses for a window under 18 s: it is
    # built with a 30 s window, then given the export's own (what `max_duration=None` would read).
    musicgen.max_duration = float(musicgen.lm.cfg.dataset.segment_duration)
    assert musicgen.max_duration == long_pieces.WINDOW_S
    cases: dict[str, Any] = {}
    for name, case in long_pieces.CASES.items():
        clip = None if case.clip_seconds is None else long_pieces.clip_audio(case.clip_seconds)
        codes, wav = audiocraft_generates(
            musicgen,
            prompt=long_pieces.PROMPT,
            new_seconds=case.duration,
            guidance=long_pieces.GUIDANCE,
            continued=clip,
            extend_stride=long_pieces.STRIDE_S,
        )
        cases[name] = case_outcome(codes, wav)
        print(f"  {name}: codes {tuple(codes.shape)}, audio {tuple(wav.shape)}")
    return {
        "checkpoints": {long_pieces.CHECKPOINT: checkpoint_digest(folder)},
        "cases": cases,
        "made_with": made_with(),
    }


# Each reference by name: a function that makes its contents in a scratch folder.
REFERENCES: dict[str, Callable[[Path], dict[str, Any]]] = {
    "stereo_greedy": make_stereo_greedy,
    "long_piece_greedy": make_long_piece_greedy,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "names", nargs="*", help=f"references to make, of {', '.join(REFERENCES)} (default: all)"
    )
    names = parser.parse_args().names or list(REFERENCES)
    unknown = [name for name in names if name not in REFERENCES]
    if unknown:
        parser.error(f"unknown reference(s) {', '.join(unknown)}; known: {', '.join(REFERENCES)}")
    torch.set_num_threads(1)
    for name in names:
        print(f"making {name}")
        with tempfile.TemporaryDirectory(prefix=f"reference-{name}-") as scratch:
            path = save_reference(name, REFERENCES[name](Path(scratch)))
        print(f"wrote {path.relative_to(REPOSITORY)} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
