"""EnCodec at the two ends of a MusicGen job: the codes of a continuation's prompt, and the audio of
the codes the decoder made; and a clip's round trip for encode-decode. Stereo models interleave left
and right codebooks as `(k c)`: L0 R0 L1 R1 ... (audiocraft's `InterleaveStereoCompressionModel`,
and transformers' stereo MusicGen), and each channel goes through the mono codec on its own."""

from __future__ import annotations

from typing import Any

import torch

from inference.checkpoints.loading import CODEC_DTYPE, LoadedCompression, LoadedMusicGen


def decode_codes(loaded: LoadedMusicGen, codes: torch.Tensor) -> torch.Tensor:
    """Audio [channels, samples] of codes [codebooks, frames] through the model's EnCodec
    (stereo models interleave left/right codebooks)."""
    codec = loaded.model.audio_encoder
    batch = codes[None, None]  # [1 chunk, 1 item, K, frames]
    if loaded.audio_channels == 2:
        left = codec.decode(batch[:, :, ::2], audio_scales=[None]).audio_values
        right = codec.decode(batch[:, :, 1::2], audio_scales=[None]).audio_values
        values = torch.cat([left, right], dim=1)
    else:
        values = codec.decode(batch, audio_scales=[None]).audio_values
    return values[0].float().cpu()


def encode_prompt(loaded: LoadedMusicGen, clip: torch.Tensor) -> torch.Tensor:
    """EnCodec codes of the continuation prompt as decoder_input_ids [codebooks, frames]
    (stereo models interleave left/right codebooks, as transformers does)."""
    codec = loaded.model.audio_encoder
    batch = clip[None].to(loaded.device, CODEC_DTYPE)  # [1, channels, samples]
    if loaded.audio_channels == 2:
        left = codec.encode(batch[:, :1]).audio_codes[0]
        right = codec.encode(batch[:, 1:]).audio_codes[0]
        codes = torch.stack([left, right], dim=2).flatten(1, 2)  # [1, 2*K, frames], L/R alternating
    else:
        codes = codec.encode(batch).audio_codes[0]  # [1, K, frames]
    return codes.reshape(-1, codes.shape[-1])


def encode_clip(compression: LoadedCompression, clip: torch.Tensor) -> list[Any]:
    """EnCodec's encoding of `clip` [channels, samples]: one for the whole clip, or, when a mono codec
    serves a stereo model, one per channel (as audiocraft's stereo wrapper encodes)."""
    batch = clip[None].to(compression.device, compression.dtype)
    codec = compression.model
    if _codes_each_channel(compression):
        return [codec.encode(batch[:, channel : channel + 1]) for channel in range(batch.shape[1])]
    return [codec.encode(batch)]


def decode_clip(compression: LoadedCompression, encoded: list[Any]) -> torch.Tensor:
    """The audio [channels, samples] of `encode_clip`'s encodings (channels side by side)."""
    codec = compression.model
    decoded = [codec.decode(part.audio_codes, part.audio_scales).audio_values for part in encoded]
    return torch.cat(decoded, dim=1)[0].float().cpu()


def _codes_each_channel(compression: LoadedCompression) -> bool:
    return compression.audio_channels == 2 and int(compression.model.config.audio_channels) == 1
