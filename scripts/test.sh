#!/usr/bin/env bash
# The whole test suite on real components. Installs what is missing (as make demo does),
# runs pytest, and stops any Docker Engine it had to start itself.
#   scripts/test.sh [pytest args...]
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

engine_was_running=0
docker info >/dev/null 2>&1 && engine_was_running=1

cleanup() {
  if [ "$engine_was_running" -eq 0 ] && is_running dockerd; then
    step "Stopping the Docker Engine this run started"
    stop_pid dockerd
  fi
}
trap cleanup EXIT

bash "$ROOT/scripts/install.sh" all delivery-tools compose target-image pebble browser

step "Running the test suite (unit, real Consul/Docker/nginx, end to end)"
cd "$ROOT"
# The suite stops itself well inside CI's 90 minutes: at PROXYSTACK_TEST_LIMIT seconds (75 min by
# default) pytest gets SIGINT and still prints its summary and its slowest steps, so a run that
# hangs tells what hung; two minutes later it is killed.
timeout --signal=INT --kill-after=120 "${PROXYSTACK_TEST_LIMIT:-4500}" "$VENV/bin/python" -m pytest -ra "$@"
