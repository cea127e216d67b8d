#!/usr/bin/env bash
# Install medconv into .venv (torch/torchvision pinned by constraints.txt) and train the main recipe,
# shrunk for a CPU, on the built-in synthetic mammograms. Ends by printing where everything was written.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/pip install -q -c constraints.txt -e ".[dev]"
.venv/bin/medconv fit --config configs/mammo_convnext.yaml --config configs/quickstart_cpu.yaml "$@"
