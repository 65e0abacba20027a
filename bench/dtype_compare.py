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

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from inference.checkpoints.random_models import COMPRESSION_DIR, TEXT_ENCODER_DIR, make_test_model  # noqa: E402
from inference.engine.audio import measure_loudness  # noqa: E402
from inference.engine.comparison import codes_and_audio, spectral_difference_db, teacher_forced  # noqa: E402
from inference.engine.musicgen_engine import MusicGenEngine  # noqa: E402
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


def teacher_forced_agreement(
    engines: dict[str, MusicGenEngine], request: GenerationRequest, codes: torch.Tensor
) -> float:
    """Share of (step, codebook) where both dtypes' guided argmax agree, given the same float32 codes."""
    a, b = (teacher_forced(engine, request, codes).picks for engine in engines.values())
    return float((a == b).float().mean())


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
                codes, wav = codes_and_audio(engines["float32"], request)
                half_codes, half_wav = codes_and_audio(engines["bfloat16"], request)
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
