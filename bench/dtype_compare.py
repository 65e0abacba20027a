"""How bfloat16 output differs from float32: the same requests, the same weights, both dtypes.

    python bench/dtype_compare.py                # real `small` architecture, random weights, 2 s
    python bench/dtype_compare.py --tiny         # the tiny test model (seconds)

Per request (a few prompts x seeds, greedy and sampled) it reports:
- token agreement, teacher-forced: the float32 codes are fed to both models, and the share of steps
  where bfloat16's guided argmax picks the same code as float32's. This isolates the dtype: free
  decoding diverges for good at the first differing code (autoregression), so its agreement after
  that says little;
- free decoding: the share of identical codes, and the first step where they differ;
- the decoded audio: integrated loudness (BS.1770, pyloudnorm) of each, and the mean absolute
  difference of their log-magnitude spectrograms in dB. For scale, the same spectral difference is
  printed between two float32 runs with different seeds (entirely different music).

Random weights make no music, so this measures numerics, not taste.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from inference.checkpoints.random_models import COMPRESSION_DIR, TEXT_ENCODER_DIR, make_test_model  # noqa: E402
from inference.engine import codec  # noqa: E402
from inference.engine.audio import measure_loudness  # noqa: E402
from inference.engine.decoder_step import DecoderStep  # noqa: E402
from inference.engine.decoding import DecodingRow, MusicGenDecoder  # noqa: E402
from inference.engine.musicgen_engine import EngineJob, MusicGenEngine  # noqa: E402
from inference.request import GenerationRequest  # noqa: E402
from inference.settings import EngineOptions, EngineSettings, MelodyOptions, ModelSources  # noqa: E402

PROMPTS = [
    "lofi hip hop beat with warm piano chords",
    "epic orchestral soundtrack with choir",
    "fast techno with a driving kick drum",
]
SEEDS = [1, 2]


def settings(model_dir: Path, dtype: str, cpu_matmul: str = "auto") -> EngineSettings:
    return EngineSettings(
        models=ModelSources(
            small=str(model_dir),
            text_encoder=str(model_dir / TEXT_ENCODER_DIR),
            compression=str(model_dir / COMPRESSION_DIR),
        ),
        engine=EngineOptions(device="cpu", dtype=dtype, cpu_matmul=cpu_matmul),  # type: ignore[arg-type]
        melody=MelodyOptions(stem_separation=False),
    )


def prepared_row(engine: MusicGenEngine, request: GenerationRequest) -> Any:
    """The engine's decoding row of a request, decoded here rather than finished by the engine."""
    prepared = engine._prepare_music(EngineJob(request), lambda outcome: None)
    prepared.row.on_finished = None
    return prepared


def decode_codes(engine: MusicGenEngine, request: GenerationRequest) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes [K, frames], audio [C, T]) of one request, through the engine's own decoding loop."""
    prepared = prepared_row(engine, request)
    decoder = engine._decoder_for(prepared.loaded)
    with torch.inference_mode():
        (decoded,) = decoder.decode([prepared.row])
        assert not isinstance(decoded, Exception)
        wav = codec.decode_codes(prepared.loaded, decoded.codes)
    return decoded.codes, wav


def teacher_forced_agreement(
    engines: dict[str, MusicGenEngine], request: GenerationRequest, codes: torch.Tensor
) -> float:
    """Share of (step, codebook) where both dtypes' guided argmax agree, given the same float32 codes."""
    picks = {}
    for name, engine in engines.items():
        prepared = prepared_row(engine, request)
        decoder = engine._decoder_for(prepared.loaded)
        picks[name] = guided_argmax(decoder, prepared.row, codes)
    a, b = picks.values()
    return float((a == b).float().mean())


def guided_argmax(decoder: MusicGenDecoder, row: DecodingRow, codes: torch.Tensor) -> torch.Tensor:
    """Argmax of the guided logits at every position, fed `codes` (not its own picks) step by step
    through the engine's decoder pass (a text model's)."""
    step = decoder.forward
    assert isinstance(step, DecoderStep), "the engines run our decoder pass"
    with torch.inference_mode():
        start = torch.full((codes.shape[0], 1), decoder.start_id, dtype=torch.long)
        _, pattern = decoder.decoder.build_delay_pattern_mask(
            start, decoder.start_id, max_length=codes.shape[-1] + codes.shape[0]
        )
        # The float32 codes laid out with the delay pattern: codebook k shifted right by k + 1.
        full = pattern.clone()
        for k in range(codes.shape[0]):
            full[k, k + 1 : k + 1 + codes.shape[-1]] = codes[k]
        full[full == -1] = decoder.pad_id
        conditioning = row.conditioning
        states = torch.stack([conditioning.states, conditioning.null_states])
        masks = None
        if conditioning.mask is not None and conditioning.null_mask is not None:
            masks = torch.stack([conditioning.mask, conditioning.null_mask])
        cache = step.new_cache(2, full.shape[-1])
        picks = []
        for position in range(full.shape[-1] - 1):
            column = full[:, position : position + 1]
            logits = step(
                input_ids=torch.cat([column, column]),
                cache=cache,
                encoder_hidden_states=states,
                encoder_attention_mask=masks,
            ).logits.float()
            logits = logits.view(2, codes.shape[0], -1)
            picks.append((logits[1] + row.sampling.guidance * (logits[0] - logits[1])).argmax(-1))
        # Position j predicts position j + 1; only the positions the pattern leaves to the model count.
        return torch.stack(picks, dim=-1)[pattern[:, 1:] == -1]


def spectral_difference_db(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean |difference| of log-magnitude STFTs (dB) of two mono clips."""
    window = torch.hann_window(2048)

    def spectrum(wav: torch.Tensor) -> torch.Tensor:
        magnitude = torch.stft(wav.mean(0), 2048, 512, window=window, return_complex=True).abs()
        return 20 * torch.log10(magnitude + 1e-5)

    length = min(a.shape[-1], b.shape[-1])
    return float((spectrum(a[..., :length]) - spectrum(b[..., :length])).abs().mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny test model instead of the real small")
    parser.add_argument("--duration", type=int, default=2)
    parser.add_argument("--model-dir", type=Path, default=REPO_ROOT / "data" / "bench-models")
    parser.add_argument(
        "--cpu-matmul",
        choices=["auto", "fbgemm", "torch"],
        default="auto",
        help="[engine] cpu_matmul of the bfloat16 engine (the float32 one keeps auto)",
    )
    args = parser.parse_args(argv)
    folder = args.model_dir / ("tiny-small" if args.tiny else "small")
    if not (folder / "config.json").exists():
        make_test_model("small", folder, tiny=args.tiny, seed=0)
    engines = {
        "float32": MusicGenEngine(settings(folder, "float32")),
        "bfloat16": MusicGenEngine(settings(folder, "bfloat16", args.cpu_matmul)),
    }
    print(
        f"{'small (real architecture)' if not args.tiny else 'tiny small'}, random weights, {args.duration} s, "
        f"bfloat16 with cpu_matmul = {args.cpu_matmul!r}"
    )
    print(
        f"{'request':<34} {'forced':>7} {'free':>6} {'diverge':>8} {'LUFS f32':>9} {'LUFS bf16':>10} {'spec dB':>8}"
    )
    rows: list[tuple[float, float, float, float]] = []
    seed_scale: list[float] = []
    for prompt in PROMPTS:
        reference: torch.Tensor | None = None
        for seed in SEEDS:
            for temperature in (0.0, 1.0):
                request = GenerationRequest(
                    model_version="small",
                    prompt=prompt,
                    duration=args.duration,
                    seed=seed,
                    temperature=temperature,
                )
                codes, wav = decode_codes(engines["float32"], request)
                half_codes, half_wav = decode_codes(engines["bfloat16"], request)
                forced = teacher_forced_agreement(engines, request, codes)
                same = codes == half_codes
                free = float(same.float().mean())
                differing = (~same).any(0).nonzero()
                diverge = int(differing[0]) if len(differing) else codes.shape[-1]
                loud32 = measure_loudness(wav, 32_000)
                loud16 = measure_loudness(half_wav, 32_000)
                spectral = spectral_difference_db(wav, half_wav)
                rows.append((forced, free, abs(loud32 - loud16), spectral))
                label = f"{prompt[:18]}.. s{seed} {'greedy' if temperature == 0 else 'sampled'}"
                print(
                    f"{label:<34} {forced:>7.1%} {free:>6.1%} {diverge:>8} {loud32:>9.2f} {loud16:>10.2f} {spectral:>8.2f}"
                )
                if temperature == 1.0:
                    if reference is not None:
                        seed_scale.append(spectral_difference_db(reference, wav))
                    reference = wav
    forced_mean = statistics.mean(r[0] for r in rows)
    print()
    print(
        f"mean: teacher-forced agreement {forced_mean:.1%}, free-decoding agreement "
        f"{statistics.mean(r[1] for r in rows):.1%}, |loudness difference| {statistics.mean(r[2] for r in rows):.2f} LU, "
        f"spectral difference {statistics.mean(r[3] for r in rows):.2f} dB "
        f"(two float32 seeds: {statistics.mean(seed_scale):.2f} dB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
