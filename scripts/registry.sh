#!/usr/bin/env bash
# A local image registry for the CD flow (Debian's docker-registry, distribution 2.8).
#   scripts/registry.sh up | down | status
# REGISTRY_ADDR [127.0.0.1:5000]; images in .stack/registry/. An engine pushes to and pulls from
# a registry on 127.0.0.0/8 without TLS; any other address needs TLS or `insecure-registries`.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ADDR="${REGISTRY_ADDR:-127.0.0.1:5000}"
DATA="$STATE/registry"

up() {
  step "Image registry on $ADDR (data in $DATA)"
  if is_running registry; then info "already running (pid $(cat "$RUN/registry.pid"))"; return 0; fi
  command -v docker-registry >/dev/null || bash "$ROOT/scripts/install.sh" delivery-tools
  mkdir -p "$DATA"
  cat >"$STATE/registry.yml" <<YAML
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $DATA}
  delete: {enabled: true}
http:
  addr: $ADDR
YAML
  setsid docker-registry serve "$STATE/registry.yml" >>"$LOGS/registry.log" 2>&1 </dev/null &
  echo $! >"$RUN/registry.pid"
  wait_for "the registry" 20 curl -sf "http://$ADDR/v2/"
  info "registry started (pid $(cat "$RUN/registry.pid"), log $LOGS/registry.log)"
}

case "${1:-}" in
  up) up ;;
  down) stop_pid registry ;;
  status) if is_running registry; then echo "registry: running on $ADDR (pid $(cat "$RUN/registry.pid"))"; else echo "registry: not running"; fi ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
