"""EnCodec at the two ends of a MusicGen job: the codes of a continuation's prompt, and the audio of
the codes the decoder made. Stereo models interleave left and right codebooks (as transformers and
audiocraft do), so each channel goes through the mono codec on its own."""

from __future__ import annotations

import torch

from inference.checkpoints.loading import CODEC_DTYPE, LoadedMusicGen


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
