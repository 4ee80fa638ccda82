#!/usr/bin/env bash
# Benchmarks on the real stack (installs what is missing first).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bash "$ROOT/scripts/install.sh" all
cd "$ROOT"
step "Deploy lead time and failed requests during the switch (5 runs)"
"$VENV/bin/python" -m bench.deploy_lead_time "$@"
