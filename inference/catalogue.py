"""The model versions and what each one can do: the one place the bot, the cogs, the CLI and the
engine ask (it imports no torch, so the bot process can use it).

- small, medium, large: make music from text (and continue clips); cannot follow a melody.
- melody, melody-large: make music and follow a melody (chroma conditioning).
- stereo-small, stereo-medium, stereo-large, stereo-melody, stereo-melody-large: the same in stereo
  (two channels at 32 kHz: the decoder predicts left and right codebooks interleaved).
- finetuned: makes music when `[models] finetuned` is configured; whether it follows a melody is
  known once its checkpoint is loaded (a melody-based fine-tune does).
- encode-decode: makes no music; it runs a clip through the compression model (EnCodec) of the
  model the bot serves, as the Cog predictor does.
"""

from __future__ import annotations

from dataclasses import dataclass

from inference.request import MODEL_VERSIONS
from inference.settings import ModelSources

__all__ = ["MODEL_VERSIONS", "VERSION_TRAITS", "ModelCatalogue", "VersionTraits"]


@dataclass(frozen=True)
class VersionTraits:
    makes_music: bool
    # True/False when the version decides it; None when its checkpoint does (a fine-tune).
    follows_melody: bool | None
    # Has no public checkpoint: unusable until `[models]` names one.
    needs_configured_source: bool = False
    # Makes two channels: True/False when the version decides it; None when its checkpoint does.
    stereo: bool | None = False


VERSION_TRAITS: dict[str, VersionTraits] = {
    "small": VersionTraits(makes_music=True, follows_melody=False),
    "medium": VersionTraits(makes_music=True, follows_melody=False),
    "large": VersionTraits(makes_music=True, follows_melody=False),
    "melody": VersionTraits(makes_music=True, follows_melody=True),
    "melody-large": VersionTraits(makes_music=True, follows_melody=True),
    "stereo-small": VersionTraits(makes_music=True, follows_melody=False, stereo=True),
    "stereo-medium": VersionTraits(makes_music=True, follows_melody=False, stereo=True),
    "stereo-large": VersionTraits(makes_music=True, follows_melody=False, stereo=True),
    "stereo-melody": VersionTraits(makes_music=True, follows_melody=True, stereo=True),
    "stereo-melody-large": VersionTraits(makes_music=True, follows_melody=True, stereo=True),
    "finetuned": VersionTraits(
        makes_music=True, follows_melody=None, needs_configured_source=True, stereo=None
    ),
    "encode-decode": VersionTraits(makes_music=False, follows_melody=False),
}
assert set(VERSION_TRAITS) == set(MODEL_VERSIONS)


class ModelCatalogue:
    """The model versions of one configuration (`[models]`)."""

    def __init__(self, models: ModelSources):
        self.models = models

    @staticmethod
    def traits(version: str) -> VersionTraits:
        return VERSION_TRAITS[version]

    def is_configured(self, version: str) -> bool:
        """Whether the version can run here (a fine-tune needs `[models] finetuned`)."""
        return not self.traits(version).needs_configured_source or bool(self.models.source_for(version))

    def music_versions(self) -> list[str]:
        """The versions that make music here, in the order of MODEL_VERSIONS."""
        return [v for v in MODEL_VERSIONS if self.traits(v).makes_music and self.is_configured(v)]

    def default_version(self) -> str:
        """The version to use when nothing says which: the fine-tune when one is configured (the
        product is a fine-tune), else small."""
        return "finetuned" if self.is_configured("finetuned") else "small"

    def cannot_follow_melody(self, version: str) -> bool:
        """True when the version is known not to follow a melody (a fine-tune is decided on load)."""
        return self.traits(version).follows_melody is False and self.traits(version).makes_music

    def unavailable_reason(self, version: str) -> str | None:
        """Why a request for `version` cannot run here, or None."""
        if not self.is_configured(version):
            return (
                "No fine-tuned model is configured on this bot, so `finetuned` is not available. "
                f"Pick another model version ({', '.join(self.music_versions())})."
            )
        return None

    def default_refusal(self, version: str) -> str | None:
        """Why `version` cannot be a default model (what /generate runs when none is picked), or None."""
        others = ", ".join(self.music_versions())
        if not self.traits(version).makes_music:
            return (
                f"{version} only runs an attached clip through EnCodec and makes no new music, so it cannot be "
                f"the default (members can still pick it themselves). Choose one of: {others}."
            )
        if not self.is_configured(version):
            return (
                f"No fine-tuned model is configured on this bot, so {version} cannot be the default. "
                f"Choose one of: {others}."
            )
        return None

    def compression_source(self) -> str:
        """What encode-decode runs through: the compression model of the model the bot serves, as the
        predictor does. That is the fine-tune when one is configured (its own EnCodec, embedded or the
        one it points at), else `[models] compression`."""
        return self.models.finetuned or self.models.compression
