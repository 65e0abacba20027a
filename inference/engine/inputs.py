"""What a request gives the decoder: its prompt's T5 states and the conditioning made of them, its
input clip (decoded, trimmed, length-checked) and, for a melody, the chroma each window follows
(through demucs when `[melody] stem_separation` is on), as audiocraft conditions MusicGen.
"""

from __future__ import annotations

import math

import torch

from inference.checkpoints.loading import LoadedMusicGen
from inference.engine import audio
from inference.engine.audio import INPUT_WINDOW_S
from inference.engine.chroma import extract_chroma
from inference.engine.decoding import Conditioning
from inference.request import GenerationRequest, RequestError
from inference.settings import EngineSettings
from inference.windows import Window

__all__ = ["JobInputs"]


class JobInputs:
    """Conditioning and clips for the engine's jobs; keeps the demucs model once it is loaded."""

    def __init__(self, settings: EngineSettings, stem_separator: torch.nn.Module | None = None) -> None:
        """`stem_separator`: a demucs-style model to use for melody stems instead of loading
        `[melody] demucs_model` on first use."""
        self.settings = settings
        self._demucs = stem_separator

    @staticmethod
    def text_states(loaded: LoadedMusicGen, prompt: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        """T5's states of the prompt and their mask, computed alone (batch 1) so that they are the same
        whatever the batch; a missing prompt is audiocraft's: "" with its mask zeroed (no text at all)."""
        model = loaded.model
        tokens = loaded.tokenizer([prompt or ""], return_tensors="pt")
        input_ids = tokens["input_ids"].to(loaded.device)
        mask = tokens["attention_mask"].to(loaded.device)
        if prompt is None:
            mask = torch.zeros_like(mask)
        return model.text_encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state, mask

    def conditioning(
        self, loaded: LoadedMusicGen, text: torch.Tensor, mask: torch.Tensor, chroma: torch.Tensor | None
    ) -> Conditioning:
        """The decoder's conditioning for one job (or one window of it): transformers'
        text-then-null-condition recipe for musicgen and musicgen-melody."""
        model = loaded.model
        if loaded.supports_melody:
            return self.prefix_conditioning(loaded, text, mask, chroma)
        decoder_config = model.decoder.config
        if (
            model.text_encoder.config.hidden_size != decoder_config.hidden_size
            and decoder_config.cross_attention_hidden_size is None
        ):
            states = model.enc_to_dec_proj(text)
            null_states = model.enc_to_dec_proj(torch.zeros_like(text))
        else:
            states, null_states = text, torch.zeros_like(text)
        null_mask = torch.zeros_like(mask)
        return Conditioning(
            states=(states * mask[..., None])[0],
            mask=mask[0],
            null_states=(null_states * null_mask[..., None])[0],
            null_mask=null_mask[0],
        )

    @staticmethod
    def prefix_conditioning(
        loaded: LoadedMusicGen, text: torch.Tensor, mask: torch.Tensor, chroma: torch.Tensor | None
    ) -> Conditioning:
        """musicgen-melody reads its conditioning as a prefix: the chroma (or the null chroma: all
        weight on bin 0), projected and tiled to `chroma_length` frames, then the projected text."""
        model = loaded.model
        if model.text_encoder.config.hidden_size != model.decoder.config.hidden_size:
            text = model.enc_to_dec_proj(text)
        null_text = torch.zeros_like(text)
        text = text * mask[..., None]
        template = chroma if chroma is not None else text.new_zeros((1, 1, model.config.num_chroma))
        null_chroma = torch.zeros_like(template)
        null_chroma[:, :, 0] = 1
        melody = chroma if chroma is not None else null_chroma

        def prefix(chroma_frames: torch.Tensor, text_states: torch.Tensor) -> torch.Tensor:
            states = chroma_frames
            if model.config.num_chroma != model.decoder.config.hidden_size:
                states = model.audio_enc_to_dec_proj(states)
            length = model.config.chroma_length
            if states.shape[1] < length:
                states = states.repeat(1, math.ceil(length / states.shape[1]), 1)
            return torch.cat([states[:, :length], text_states], dim=1)[0]

        return Conditioning(
            states=prefix(melody, text), mask=None, null_states=prefix(null_chroma, null_text), null_mask=None
        )

    def load_input(
        self, request: GenerationRequest, loaded: LoadedMusicGen, *, seconds: float = INPUT_WINDOW_S
    ) -> torch.Tensor:
        """The input clip decoded at the model's rate and channels, trimmed to [start*sr : end*sr] and
        to at most `seconds` from the start."""
        clip = self.read_clip(request, loaded.sample_rate, loaded.audio_channels, seconds=seconds)
        # The clip ends at start + its trimmed length (the decoder stops reading at continuation_end),
        # which is all a continuation's check needs.
        request.check_input_length(
            request.continuation_start + clip.shape[-1] / loaded.sample_rate, window_s=loaded.window_s
        )
        return clip

    def read_clip(
        self, request: GenerationRequest, sample_rate: int, channels: int, *, seconds: float = INPUT_WINDOW_S
    ) -> torch.Tensor:
        """The input clip decoded at `sample_rate`/`channels` and trimmed to [start*sr : end*sr]."""
        assert request.input_audio is not None
        clip = audio.load_audio(
            request.input_audio,
            sample_rate=sample_rate,
            channels=channels,
            start_s=request.continuation_start,
            end_s=request.continuation_end,
            timeout_s=self.settings.engine.decode_timeout_s,
            max_seconds=self.settings.engine.max_input_seconds,
            window_s=seconds,
        )
        if clip.shape[-1] == 0:
            raise RequestError("The trimmed clip is empty: check continuation_start and continuation_end.")
        return clip

    def stem_separator(self, device: torch.device) -> torch.nn.Module | None:
        """The demucs model for melody stems (loaded once), or None when `[melody] stem_separation` is off."""
        if not self.settings.melody.stem_separation:
            return None
        if self._demucs is None:
            from inference.engine.stems import load_demucs

            self._demucs = load_demucs(self.settings.melody.demucs_model)
        # Demucs runs in float32 whatever the MusicGen dtype (audiocraft autocasts it to float32).
        return self._demucs.to(device=device, dtype=torch.float32)

    def melody_chromas(
        self,
        loaded: LoadedMusicGen,
        clip: torch.Tensor,
        separator: torch.nn.Module | None,
        windows: tuple[Window, ...],
    ) -> list[torch.Tensor]:
        """The chroma each window follows. One window: the clip's. Past the model's window, as
        audiocraft slices it: each window's melody is a whole window of the clip from the window's time
        offset on, the clip repeated where it is shorter (`positions % length`)."""
        if len(windows) == 1:
            return [self.melody_chroma(loaded, clip, separator)]
        window_samples = int(loaded.window_s * loaded.sample_rate)
        chromas = []
        for window in windows:
            start = window.melody_start_sample(frame_rate=loaded.frame_rate, sample_rate=loaded.sample_rate)
            positions = torch.arange(start, start + window_samples) % clip.shape[-1]
            chromas.append(self.melody_chroma(loaded, clip[..., positions], separator))
        return chromas

    def melody_chroma(
        self, loaded: LoadedMusicGen, clip: torch.Tensor, separator: torch.nn.Module | None
    ) -> torch.Tensor:
        """audiocraft's melody conditioning: demucs stems (vocals + other) when configured, then the argmax chroma."""
        # audiocraft mixes a melody down to mono before anything else (`ConditioningProvider._collate_wavs`):
        # a stereo model's stereo clip is separated as its mono mix, like a mono model's.
        mono = clip.mean(dim=0, keepdim=True)
        if separator is not None:
            from inference.engine.stems import melody_stems

            mono = melody_stems(mono, loaded.sample_rate, separator, loaded.device)
        return extract_chroma(mono, loaded.sample_rate)  # [1, frames, 12]
