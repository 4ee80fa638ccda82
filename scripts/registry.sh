#!/usr/bin/env bash
# A local image registry for the CD flow (Debian's docker-registry, distribution 2.8).
#   scripts/registry.sh up | down | status
# REGISTRY_ADDR [127.0.0.1:5000]; images in .stack/registry/. An engine pushes to and pulls from
# a registry on 127.0.0.0/8 without TLS; any other address needs TLS: REGISTRY_CA=DIR (a
# scripts/certs.sh CA) signs the registry's certificate, and every engine on this machine trusts
# it through /etc/docker/certs.d/ADDR/ca.crt (`down` removes that again).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ADDR="${REGISTRY_ADDR:-127.0.0.1:5000}"
DATA="$STATE/registry"
TRUST="/etc/docker/certs.d/$ADDR"

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
  local scheme=http curl_ca=()
  if [ -n "${REGISTRY_CA:-}" ]; then
    bash "$ROOT/scripts/certs.sh" server "$REGISTRY_CA" "$STATE/registry-tls" "IP:${ADDR%:*}" >/dev/null
    printf '  tls: {certificate: %s, key: %s}\n' "$STATE/registry-tls/cert.pem" "$STATE/registry-tls/key.pem" >>"$STATE/registry.yml"
    mkdir -p "$TRUST"; cp "$REGISTRY_CA/ca.pem" "$TRUST/ca.crt"
    scheme=https; curl_ca=(--cacert "$REGISTRY_CA/ca.pem")
  fi
  setsid docker-registry serve "$STATE/registry.yml" >>"$LOGS/registry.log" 2>&1 </dev/null &
  echo $! >"$RUN/registry.pid"
  wait_for "the registry" 20 curl -sf "${curl_ca[@]}" "$scheme://$ADDR/v2/"
  info "registry started (pid $(cat "$RUN/registry.pid"), log $LOGS/registry.log)"
}

case "${1:-}" in
  up) up ;;
  down) stop_pid registry; rm -rf "$TRUST" ;;
  status) if is_running registry; then echo "registry: running on $ADDR (pid $(cat "$RUN/registry.pid"))"; else echo "registry: not running"; fi ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
