#!/usr/bin/env bash
# Set up the audiocraft comparison tier (tests/audiocraft_tier/) in its own virtualenv.
#
# audiocraft 1.3.0 pins torch 2.1 / torchaudio<2.1.2 / xformers and ~140 packages of CUDA wheels, so
# it is installed with --no-deps on top of the project's own environment instead:
#   - .venv-audiocraft sees the project venv's packages (torch, transformers, ...) through a .pth file,
#     and nothing is ever installed into the project venv;
#   - audiocraft and the few light packages its imports need are installed into .venv-audiocraft;
#   - torchaudio 2.11 (the newest on PyPI) is installed without its compiled extension, which is built
#     for another torch and CUDA: torchaudio then runs its pure-python code paths (Spectrogram,
#     Loudness with the python lfilter), which is all audiocraft's normalisation and chroma need;
#   - xformers and spacy are replaced by the stand-ins in tests/audiocraft_tier/stubs (see its README).
#
# Usage: scripts/install-audiocraft-tier.sh            (then: .venv-audiocraft/bin/python -m pytest tests/audiocraft_tier)
# Env:   MAIN_VENV (default .venv), TIER_VENV (default .venv-audiocraft)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
main_venv="${MAIN_VENV:-$repo/.venv}"
tier_venv="${TIER_VENV:-$repo/.venv-audiocraft}"

if [[ ! -x "$main_venv/bin/python" ]]; then
    echo "no project virtualenv at $main_venv (create it first, or set MAIN_VENV)" >&2
    exit 1
fi

"$main_venv/bin/python" -m venv "$tier_venv"
py="$tier_venv/bin/python"
tier_site="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
main_site="$("$main_venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

# The tier's own site-packages stays first on sys.path; the project's packages and the stand-ins follow.
echo "import site; site.addsitedir('$main_site')" > "$tier_site/_musicgen_bot_project_venv.pth"
echo "$repo/tests/audiocraft_tier/stubs" > "$tier_site/_audiocraft_tier_stubs.pth"

# pip then reports that audiocraft wants torch==2.1.0, torchaudio<2.1.2 and av==11.0.0: expected, ignored.
"$py" -m pip install --quiet --no-deps \
    audiocraft==1.3.0 torchaudio==2.11.0 flashy==0.0.2 num2words==0.5.14
# These resolve against the project's packages (numpy, scipy, torch are already there).
"$py" -m pip install --quiet \
    librosa==0.11.0 torchmetrics==1.9.0 dora-search==0.1.13 colorlog

# torchaudio's compiled extension links against CUDA libraries of another torch; without it torchaudio
# falls back to its python implementations.
rm -f "$tier_site"/torchaudio/lib/*.so
# flashy's wheel ships its own top-level `tests` package, which would shadow the project's.
rm -rf "$tier_site/tests"

"$py" - <<'PY'
import torch, torchaudio, audiocraft.models, audiocraft.data.audio_utils, audiocraft.modules.chroma  # noqa: F401
print(f"audiocraft {audiocraft.__version__} imports on torch {torch.__version__} (torchaudio {torchaudio.__version__}, python paths)")
PY
echo "run the tier with: $tier_venv/bin/python -m pytest -m audiocraft $repo/tests/audiocraft_tier"
