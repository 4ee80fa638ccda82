# Shared helpers for the stack's shell scripts: paths, progress lines, pid files.
# Sourced, not run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${PROXYSTACK_STATE:-$ROOT/.stack}"   # everything the scripts create lives here
RUN="$STATE/run"                             # pid files of what the scripts started
LOGS="$STATE/logs"                           # one log file per component
BIN="$STATE/bin"                             # binaries fetched for the stack (consul)
VENV="$ROOT/.venv"
mkdir -p "$RUN" "$LOGS" "$BIN"
export PATH="$VENV/bin:$BIN:$PATH"

BASE_TAG="proxystack-base:bookworm-3"        # local base image when no registry answers (with nginx and its Lua module)

step() { printf '\033[1m==> %s\033[0m\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die()  { printf 'error: %s\n' "$*" >&2; exit 1; }

# is_running NAME: true when RUN/NAME.pid names a live process.
is_running() {
  local f="$RUN/$1.pid"
  [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null
}

# stop_pid NAME: SIGTERM the process in RUN/NAME.pid, wait up to 15 s, then SIGKILL.
stop_pid() {
  local name="$1" f="$RUN/$1.pid" pid
  [ -s "$f" ] || return 0
  pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { info "$name did not stop in 15 s; SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; }
    info "stopped $name (pid $pid)"
  fi
  rm -f "$f"
}

# wait_for DESCRIPTION SECONDS COMMAND...: poll COMMAND every 0.2 s until it succeeds.
wait_for() {
  local what="$1" secs="$2"; shift 2
  local deadline=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || die "$what did not come up within ${secs}s (logs: $LOGS)"
    sleep 0.2
  done
}

debian_mirror() {
  local f=/etc/apt/sources.list.d/debian.sources
  if [ -f "$f" ]; then
    awk '/^URIs:/ {print $2; exit}' "$f"
  elif [ -f /etc/apt/sources.list ]; then
    awk '/^deb / && $2 ~ /^http/ {print $2; exit}' /etc/apt/sources.list
  fi
}
