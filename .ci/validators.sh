#!/usr/bin/env bash
# Build the environment in which Megatron-LM's, DeepSpeed's and torchtitan's own validators check emitted configs.
# Kept out of the package's dependencies. Idempotent: reuses .venv-validators/ and .validators/ if present.
#   - torch==2.13.0 CPU (the wheel this machine kind keeps on disk), numpy, packaging;
#   - DeepSpeed 0.19.8 built without ops (DS_BUILD_OPS=0, against that torch: --no-build-isolation);
#   - Megatron-Core 0.19.2: on Python 3.11 pip would pick 0.16.1, which has no megatron/training/; the
#     0.19 wheel declares Python >= 3.12 but its Python files run on 3.11, so it is unpacked and put on
#     PYTHONPATH (tests/validators/_shims.py adds typing.override and a triton stand-in).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-validators
MCORE=.validators/megatron-core
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch, deepspeed" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet torch==2.13.0 numpy packaging
  DS_BUILD_OPS=0 "$VENV/bin/python" -m pip install --quiet --no-build-isolation deepspeed==0.19.8
fi
if [ ! -d "$MCORE/megatron/training" ]; then
  rm -rf .validators/wheel "$MCORE"
  mkdir -p .validators/wheel "$MCORE"
  "$VENV/bin/python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    megatron-core==0.19.2 -d .validators/wheel
  "$VENV/bin/python" -m zipfile -e .validators/wheel/megatron_core-0.19.2-*.whl "$MCORE"
fi
# torchtitan 0.3.0 (the PyPI release: --module/--config job modules, tyro overrides) with its declared
# dependencies (tyro, datasets, torchdata, spmd_types, ...; it declares no torch, so the CPU torch above
# stays) and torchao for its Float8 converter. tests/validators/torchtitan_check.py imports them on CPU.
if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('torchtitan') != '0.3.0' or m.version('torchao') != '0.18.0')" 2>/dev/null; then
  "$VENV/bin/python" -m pip install --quiet torchtitan==0.3.0 torchao==0.18.0
fi
echo "validators ready: $VENV (DeepSpeed, torchtitan), $MCORE (Megatron-LM)"
