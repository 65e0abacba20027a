"""Demucs stem separation for melody conditioning, as audiocraft's `ChromaStemConditioner` does it.

Drums and bass dominate a chroma and hide the melody, so audiocraft separates the clip with demucs
`htdemucs` and keeps vocals + other before taking the chroma. The demucs model comes from
`[melody] demucs_model`: a pretrained name (its weights must be in the torch hub cache or downloadable)
or the path of a saved model file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import yaml

from inference.errors import with_owner_details
from inference.request import RequestError

logger = logging.getLogger(__name__)

# The stems that carry the melody (audiocraft keeps these and drops drums and bass).
MELODY_STEMS = ("vocals", "other")


class StemSeparationUnavailable(RequestError):
    """The configured demucs model cannot be loaded; the message tells the bot owner what to change."""


def _unavailable(spec: str, reason: str) -> StemSeparationUnavailable:
    return StemSeparationUnavailable(
        with_owner_details(
            "Following a melody is not available on this bot right now (its set-up needs fixing; "
            "the owner can see why in the log). Set continuation to True to continue your clip instead.",
            f"melody stem separation is not available: the demucs model {spec!r} could not be loaded "
            f"({reason}). Set `[melody] stem_separation = false` in config.toml to take the chroma from "
            "the full mix, or point `[melody] demucs_model` at a saved demucs model file.",
        )
    )


def _cached_remote_files(name: str) -> list[Path] | None:
    """The torch-hub cache files demucs' legacy remote repo would download for `name`, or None if the
    name is not one of its pretrained models."""
    from demucs.pretrained import REMOTE_ROOT, _parse_remote_files

    urls = _parse_remote_files(REMOTE_ROOT / "files.txt")
    bag_file = REMOTE_ROOT / f"{name}.yaml"
    if bag_file.exists():
        signatures = list(yaml.safe_load(bag_file.read_text())["models"])
    elif name in urls:
        signatures = [name]
    else:
        return None
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    return [checkpoints / urls[sig].rsplit("/", 1)[-1] for sig in signatures if sig in urls]


def load_demucs(spec: str) -> torch.nn.Module:
    """Load a demucs separation model: a saved model file (a pickled module or a demucs package with
    klass/args/kwargs/state) or a pretrained name. Raises StemSeparationUnavailable with a clear message."""
    path = Path(spec).expanduser()
    if path.is_file():
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=False)
            if isinstance(loaded, dict):
                from demucs.states import load_model

                loaded = load_model(loaded)
        except Exception as exc:  # a corrupt or foreign file: say which and why
            raise _unavailable(spec, f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(loaded, torch.nn.Module) or not hasattr(loaded, "sources"):
            raise _unavailable(spec, "the file does not hold a demucs model")
        return loaded.eval()
    if path.suffix in {".th", ".pt", ".pth"} or "/" in spec:
        raise _unavailable(spec, "no such file")

    from demucs import pretrained
    from demucs.repo import AnyModelRepo, BagOnlyRepo, RemoteRepo

    cached = _cached_remote_files(spec)
    try:
        if cached and all(file.exists() for file in cached):
            # Load straight from the torch hub cache: demucs' default path first asks the Hugging Face
            # hub and retries for ~25 s when there is no network.
            model_repo = RemoteRepo(pretrained._parse_remote_files(pretrained.REMOTE_ROOT / "files.txt"))
            bag_repo = BagOnlyRepo(pretrained.REMOTE_ROOT, model_repo)
            model = AnyModelRepo(model_repo, bag_repo).get_model(spec)
        else:
            logger.info("Fetching demucs model %r (not in the torch hub cache)", spec)
            model = pretrained.get_model(spec)
    except Exception as exc:
        raise _unavailable(spec, f"{type(exc).__name__}: {exc}") from exc
    return model.eval()


def melody_stems(
    wav: torch.Tensor, sample_rate: int, model: torch.nn.Module, device: torch.device
) -> torch.Tensor:
    """The vocals + other stems of `wav` [C, T] at `sample_rate`, mixed down to mono [1, T'] at `sample_rate`.

    `model` (float32, already on `device`) is a demucs model or anything with its interface
    (`sources`, `samplerate`, `audio_channels`, `segment`, forward [B, C, T] -> [B, sources, C, T])."""
    from demucs.apply import apply_model
    from demucs.audio import convert_audio

    sources: list[str] = list(model.sources)  # type: ignore[arg-type]
    missing = [stem for stem in MELODY_STEMS if stem not in sources]
    if missing:
        raise _unavailable(
            getattr(model, "name", type(model).__name__), f"it has no {', '.join(missing)} stem"
        )
    stem_indices = [sources.index(stem) for stem in MELODY_STEMS]
    demucs_rate = int(model.samplerate)  # type: ignore[arg-type]
    demucs_channels = int(model.audio_channels)  # type: ignore[arg-type]
    mix = convert_audio(wav.float().cpu(), sample_rate, demucs_rate, demucs_channels)
    # [1, sources, channels, T]; shifts use `random`. Any module with the demucs interface will do.
    stems = apply_model(model, mix[None], device=device)
    melody = stems[0, stem_indices].sum(0)  # [channels, T]
    return convert_audio(melody, demucs_rate, sample_rate, 1)
