#!/usr/bin/env bash
# Starts, stops and reports the stack: Consul, Prometheus, nginx, registrator, gatekeeper, proxy-reloader,
# the dashboard (read-only; DASHBOARD_ACTIONS=1 offers promote/abort/rollback to the operator's token).
#   scripts/stack.sh up | down | status | swarm | restore FILE
# `restore FILE` brings a backup (make backup) back: the stack started if it is not, Consul's
# state and the token files replaced, the daemons restarted with them (docs/operations.md).
# `swarm` turns the engine's swarm mode on (a single-node swarm on 127.0.0.1) for Swarm services;
# `down` removes the demo's Swarm services and leaves the swarm if `swarm` made it.
# Logs: .stack/logs/<component>.log   pid files: .stack/run/<component>.pid
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONSUL_ADDR="127.0.0.1:8500"
PROXY_LISTEN="${PROXY_LISTEN:-127.0.0.1:8000}"
PROXY_TLS_LISTEN="${PROXY_TLS_LISTEN:-127.0.0.1:8443}"
# HTTPS: certificates from the stack's own CA (made once, in $STATE/ca; clients trust root.crt),
# for every routed host name and, as the default certificate, for localhost and 127.0.0.1.
TLS_ARGS=(--tls-listen "$PROXY_TLS_LISTEN" --local-ca "$STATE/ca" --local-ca-default localhost,127.0.0.1)
NGINX_PREFIX="$STATE/nginx"
NGINX_BIN="$(command -v nginx || echo /usr/sbin/nginx)"
DEMO_LABEL="proxystack.demo"
TOKENS="$STATE/tokens"
PROMETHEUS_LISTEN="127.0.0.1:9090"
PROMETHEUS_DIR="$STATE/prometheus"
DASHBOARD_LISTEN="${DASHBOARD_LISTEN:-127.0.0.1:8005}"

start_bg() {   # start_bg NAME COMMAND...: run in its own session, log and pid file by NAME
  local name="$1"; shift
  if is_running "$name"; then info "$name already running (pid $(cat "$RUN/$name.pid"))"; return 0; fi
  setsid "$@" >>"$LOGS/$name.log" 2>&1 < /dev/null &
  echo $! >"$RUN/$name.pid"
  info "$name started (pid $!, log $LOGS/$name.log)"
}

consul_up() {
  step "Consul (single-node server, data in $STATE/consul, UI http://$CONSUL_ADDR/ui/)"
  mkdir -p "$STATE/consul"
  start_bg consul consul agent -server -bootstrap-expect 1 -data-dir "$STATE/consul" -node proxystack \
    -bind 127.0.0.1 -client 127.0.0.1 -ui -log-level warn -hcl 'check_update_interval = "0s"' \
    -hcl 'limits { http_max_conns_per_client = 4096 }' \
    -hcl 'acl { enabled = true, default_policy = "deny", enable_token_persistence = true }'
  wait_for "Consul leader election" 60 sh -c "curl -sf http://$CONSUL_ADDR/v1/status/leader | grep -q ':'"
  info "leader elected"
  "$VENV/bin/python" -m catalog.acl_setup --consul "$CONSUL_ADDR" --tokens "$TOKENS" >>"$LOGS/consul.log" 2>&1 \
    || die "ACL set-up failed (see $LOGS/consul.log)"
  info "ACLs on (default deny); one token per part in $TOKENS/ (the operator's: $TOKENS/operator.token)"
}

up() {
  consul_up

  step "Prometheus on http://$PROMETHEUS_LISTEN/ (data in $PROMETHEUS_DIR/data)"
  mkdir -p "$PROMETHEUS_DIR/data"
  # Debian's Prometheus has no Consul discovery: monitoring.targets follows the daemons'
  # metrics endpoints in Consul (with Prometheus's read-only token) and writes a file_sd file.
  start_bg prometheus-targets "$VENV/bin/python" -m monitoring.targets --consul "$CONSUL_ADDR" \
    --consul-token-file "$TOKENS/prometheus.token" --out "$PROMETHEUS_DIR/targets.json"
  wait_for "the Prometheus targets file" 30 test -s "$PROMETHEUS_DIR/targets.json"
  "$VENV/bin/python" -m monitoring.config --targets "$PROMETHEUS_DIR/targets.json" \
    --listen "$PROMETHEUS_LISTEN" --out "$PROMETHEUS_DIR/prometheus.yml"
  start_bg prometheus prometheus --config.file="$PROMETHEUS_DIR/prometheus.yml" \
    --storage.tsdb.path="$PROMETHEUS_DIR/data" --storage.tsdb.retention.time=2d \
    --web.listen-address="$PROMETHEUS_LISTEN" --web.enable-lifecycle
  wait_for "Prometheus" 60 curl -sf "http://$PROMETHEUS_LISTEN/-/ready"
  # An already running Prometheus reads the config again (it may have changed).
  curl -sf -X POST "http://$PROMETHEUS_LISTEN/-/reload" >/dev/null || die "Prometheus refused its configuration (see $LOGS/prometheus.log)"
  info "scraping every daemon announced in Consul as proxystack-metrics; rules: monitoring/rules.yml"

  step "nginx on http://$PROXY_LISTEN/ and https://$PROXY_TLS_LISTEN/ (prefix $NGINX_PREFIX)"
  mkdir -p "$NGINX_PREFIX/logs"
  proxy-reloader --consul "$CONSUL_ADDR" --consul-token-file "$TOKENS/proxy-reloader.token" \
    --nginx-prefix "$NGINX_PREFIX" --listen "$PROXY_LISTEN" "${TLS_ARGS[@]}" --once \
    >>"$LOGS/proxy-reloader.log" 2>&1 || die "could not render the first nginx config (see $LOGS/proxy-reloader.log)"
  if [ -s "$NGINX_PREFIX/nginx.pid" ] && kill -0 "$(cat "$NGINX_PREFIX/nginx.pid")" 2>/dev/null; then
    info "nginx already running (pid $(cat "$NGINX_PREFIX/nginx.pid"))"
  else
    rm -f "$NGINX_PREFIX/admin/push.sock"      # left behind if nginx was killed; nginx cannot bind it then
    "$NGINX_BIN" -p "$NGINX_PREFIX" -c "$NGINX_PREFIX/nginx.conf" 2>>"$LOGS/nginx.log" || die "nginx did not start (see $LOGS/nginx.log)"
    wait_for "nginx" 10 test -s "$NGINX_PREFIX/nginx.pid"
    cp "$NGINX_PREFIX/nginx.pid" "$RUN/nginx.pid"
    info "nginx started (pid $(cat "$RUN/nginx.pid"), logs $NGINX_PREFIX/logs/)"
  fi

  step "registrator, gatekeeper, proxy-reloader"
  start_bg registrator registrator --consul "$CONSUL_ADDR" --consul-token-file "$TOKENS/registrator.token" \
    --explicit --exclude-label proxystack.test --metrics 127.0.0.1:8002
  start_bg gatekeeper gatekeeper --consul "$CONSUL_ADDR" --consul-token-file "$TOKENS/gatekeeper.token" \
    run --drain-seconds "${DRAIN_SECONDS:-5}" --metrics 127.0.0.1:8003
  start_bg proxy-reloader proxy-reloader --consul "$CONSUL_ADDR" --consul-token-file "$TOKENS/proxy-reloader.token" \
    --nginx-prefix "$NGINX_PREFIX" --listen "$PROXY_LISTEN" "${TLS_ARGS[@]}" --admin 127.0.0.1:8001 --report-check

  step "dashboard on http://$DASHBOARD_LISTEN/"
  local actions=(); [ "${DASHBOARD_ACTIONS:-0}" = "1" ] && actions=(--allow-actions)
  start_bg dashboard dashboard --consul "$CONSUL_ADDR" --listen "$DASHBOARD_LISTEN" \
    --prometheus "http://$PROMETHEUS_LISTEN" "${actions[@]}"
  wait_for "the dashboard" 30 curl -sf "http://$DASHBOARD_LISTEN/healthz"
  info "log in with the token in $TOKENS/viewer.token (read-only) or $TOKENS/operator.token"
}

swarm() {
  step "Swarm mode (Docker's own scheduler for replicas; single node on 127.0.0.1)"
  local state
  state="$(docker info --format '{{.Swarm.LocalNodeState}}')" || die "no Docker Engine answers (make install starts one)"
  if [ "$state" = "active" ]; then
    info "already on: node $(docker info --format '{{.Swarm.NodeID}}'), managers $(docker info --format '{{.Swarm.Managers}}')"
    return 0
  fi
  # Loopback only: Swarm's management (2377) and gossip (7946) ports listen on 127.0.0.1. The
  # routing mesh goes: the stack routes, the mesh's virtual port would balance over tasks that
  # have not passed their gate, and its VXLAN port (4789/udp) would listen on every interface.
  # Services publish their tasks' ports in host mode instead (docs/guides/swarm.md).
  docker swarm init --advertise-addr 127.0.0.1 --listen-addr 127.0.0.1:2377 >/dev/null || die "docker swarm init failed"
  touch "$RUN/swarm.by-stack"
  docker network rm ingress >/dev/null 2>&1 <<<y || die "could not remove Swarm's routing mesh (docker network rm ingress)"
  wait_for "the routing mesh to go" 30 sh -c "! docker network inspect ingress"
  info "swarm mode on (node $(docker info --format '{{.Swarm.NodeID}}')); \`make stop\` leaves it again"
  info "listening on 127.0.0.1 only (2377, 7946); no routing mesh: services publish with --publish mode=host"
}

restore() {   # restore FILE: a backup (catalog/backup.py) into the stack's Consul, then the stack up with it
  local file="$1"
  "$VENV/bin/python" -m catalog.backup check "$file" || die "nothing restored"
  # The daemons stay down until the backup is in: on an empty Consul they would register, test
  # and promote the containers still running as if they were new.
  for c in dashboard proxy-reloader gatekeeper registrator prometheus-targets; do stop_pid "$c"; done
  is_running consul || consul_up
  step "Restoring $file into Consul at $CONSUL_ADDR"
  if ! "$VENV/bin/python" -m catalog.backup restore "$file" --consul "$CONSUL_ADDR" --tokens "$TOKENS" | sed 's/^/    /'; then
    die "nothing restored; start the stack again as it was with scripts/stack.sh up"
  fi
  step "Starting the stack with the restored state and tokens"
  up
}

down() {
  step "Stopping the stack"
  local ids
  ids="$(docker service ls -q --filter "label=$DEMO_LABEL" 2>/dev/null || true)"
  if [ -n "$ids" ]; then docker service rm $ids >/dev/null; info "removed $(echo "$ids" | wc -l) demo Swarm service(s)"; fi
  if [ -f "$RUN/swarm.by-stack" ]; then
    docker swarm leave --force >/dev/null 2>&1 || true
    rm -f "$RUN/swarm.by-stack"; info "left the swarm the stack had made"
  fi
  ids="$(docker ps -aq --filter "label=$DEMO_LABEL" 2>/dev/null || true)"
  if [ -n "$ids" ]; then docker rm -f $ids >/dev/null; info "removed $(echo "$ids" | wc -l) demo container(s)"; fi
  for c in dashboard proxy-reloader gatekeeper registrator registry prometheus prometheus-targets; do stop_pid "$c"; done
  if [ -s "$RUN/nginx.pid" ]; then kill -QUIT "$(cat "$RUN/nginx.pid")" 2>/dev/null || true; sleep 0.5; stop_pid nginx; fi
  stop_pid consul
  if [ -s "$RUN/dockerd.pid" ]; then
    stop_pid dockerd
  fi
}

status() {
  for c in consul prometheus prometheus-targets nginx registrator gatekeeper proxy-reloader dashboard registry dockerd; do
    if is_running "$c"; then echo "$c: running (pid $(cat "$RUN/$c.pid"))"; else echo "$c: not started by this stack"; fi
  done
}

case "${1:-}" in
  up) up ;; down) down ;; status) status ;; swarm) swarm ;;
  restore) [ -n "${2:-}" ] || die "usage: $0 restore FILE"; restore "$2" ;;
  *) echo "usage: $0 up|down|status|swarm|restore FILE" >&2; exit 2 ;;
esac
