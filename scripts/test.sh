#!/usr/bin/env bash
# The whole test suite on real components. Installs what is missing (as make demo does),
# runs pytest, and stops any Docker Engine it had to start itself.
#   scripts/test.sh [pytest args...]
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

engine_was_running=0
docker info >/dev/null 2>&1 && engine_was_running=1

cleanup() {
  if [ -n "${side_b:-}" ] && kill -0 "$side_b" 2>/dev/null; then     # interrupted: side b stops too
    pkill -TERM -P "$side_b" 2>/dev/null || true
    wait "$side_b" 2>/dev/null || true
  fi
  if [ "$engine_was_running" -eq 0 ] && is_running dockerd; then
    step "Stopping the Docker Engine this run started"
    stop_pid dockerd
  fi
}
trap cleanup EXIT

bash "$ROOT/scripts/install.sh" all delivery-tools compose target-image pebble browser

cd "$ROOT"
# The suite stops itself well inside CI's 90 minutes: at PROXYSTACK_TEST_LIMIT seconds (70 min by
# default) pytest gets SIGINT and still prints its summary and its slowest steps, so a run that
# hangs tells what hung; two minutes later it is killed.
run_pytest() {   # run_pytest LIMIT_SECONDS [pytest args...]
  local limit="$1"; shift
  timeout --signal=INT --kill-after=120 "$limit" "$VENV/bin/python" -m pytest -ra "$@"
}

if [ $# -gt 0 ]; then          # what the caller chose, in one process
  step "Running pytest $*"
  run_pytest "${PROXYSTACK_TEST_LIMIT:-4200}" "$@"
  exit
fi

# Two pytest processes side by side, one side of the suite each (tests/conftest.py says which
# module runs where; each side has its own Consul and temporary folder), then the tests that
# restart the Docker Engine, alone: the restart stops every container. Side b's output follows
# side a's, whole, once both have finished.
side_b_log="$LOGS/test-side-b.log"
mkdir -p "$LOGS"
# pytest's temporary folders, one per side, emptied by pytest at each run (short: nginx's unix socket lives there)
tmp="/tmp/proxystack-tests-$(printf '%s' "$ROOT" | sha256sum | cut -c1-8)"
mkdir -p "$tmp"
step "Running the test suite (unit, real Consul/Docker/nginx, end to end), two sides at once"
info "side b (deploy, Swarm, the cluster, progressive, ACME) writes to $side_b_log until side a is done"
PROXYSTACK_TEST_SIDE=b PROXYSTACK_TEST_CONSUL_PORT=18510 \
  run_pytest "${PROXYSTACK_TEST_LIMIT:-4200}" -m "not engine_restart" --basetemp="$tmp/b" \
  -p no:cacheprovider >"$side_b_log" 2>&1 &
side_b=$!
status=0
PROXYSTACK_TEST_SIDE=a run_pytest "${PROXYSTACK_TEST_LIMIT:-4200}" -m "not engine_restart" \
  --basetemp="$tmp/a" || status=$?
side_b_status=0
wait "$side_b" || side_b_status=$?
step "Side b of the test suite"
cat "$side_b_log"
[ "$side_b_status" -eq 0 ] || status=$side_b_status
step "Running the tests that restart the Docker Engine, alone"
run_pytest 600 -m engine_restart --basetemp="$tmp/engine" || status=$?
exit "$status"
