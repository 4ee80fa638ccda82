#!/usr/bin/env bash
# The main job's story, on a running stack (scripts/stack.sh up):
# demo v1 is deployed through the gate and served; v2 takes over; a broken v3 is refused; a v4
# that passes its tests but fails real traffic is rolled back by progressive analysis; then demo
# becomes a Swarm service: scaled, updated (a broken image rolled back), healed and autoscaled.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PROXY="http://${PROXY_LISTEN:-127.0.0.1:8000}"
export CONSUL_HTTP_TOKEN_FILE="$STATE/tokens/operator.token"   # gatekeeper CLI as the operator
LABELS=(--label SERVICE_NAME=demo --label gatekeeper.tests=demo-test:latest --label proxystack.demo=1)

deploy() {   # deploy VERSION IMAGE: docker run with labels only, then wait for the gate's verdict
  local version="$1" image="$2"
  docker rm -f "demo-$version" >/dev/null 2>&1 || true
  info "\$ docker run -d -P --name demo-$version ${LABELS[*]} $image"
  docker run -d -P --name "demo-$version" "${LABELS[@]}" "$image" >/dev/null
  info "published on $(docker port "demo-$version" 8080 | head -1)"
  gatekeeper wait demo --version "$version" --timeout 180 | sed 's/^/    gatekeeper: /'
  return "${PIPESTATUS[0]}"
}

served_version() { curl -s --max-time 2 "$PROXY/demo/1" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("version",""))' 2>/dev/null; }

wait_served() {   # wait_served VERSION: until the proxy answers from VERSION
  local deadline=$(( $(date +%s) + 30 ))
  until [ "$(served_version)" = "$1" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || die "the proxy did not switch to $1 within 30 s (logs: $LOGS)"
    sleep 0.2
  done
  info "\$ curl $PROXY/demo/1  ->  $(curl -s "$PROXY/demo/1")"
}

# Swarm services run the demo's tasks with the gate mirrored into their health (docs/guides/swarm.md).
SWARM=(--publish mode=host,target=8080 --container-label SERVICE_NAME=demo
       --container-label gatekeeper.tests=demo-test:latest
       --container-label SERVICE_CHECK_HTTP=/health --container-label SERVICE_CHECK_INTERVAL=1s
       --health-cmd "grep -qx open /tmp/proxystack-gate" --health-interval 1s --health-retries 3
       --health-start-period 120s --update-order start-first --update-failure-action rollback --restart-delay 1s
       --label proxystack.demo=1 --no-resolve-image)

replicas() {   # replicas FIELD: desired | running | admitted, from gatekeeper status
  gatekeeper status demo --json | python3 -c 'import json,sys; r=json.load(sys.stdin)["services"][0]["replicas"] or {}; print(r.get(sys.argv[1], 0))' "$1"
}

wait_admitted() {   # wait_admitted N: until N Swarm tasks of demo pass their gate
  local deadline=$(( $(date +%s) + 180 ))
  until [ "$(replicas admitted)" = "$1" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || die "demo did not reach $1 admitted task(s) within 180 s (logs: $LOGS)"
    sleep 0.5
  done
}

wait_history() {   # wait_history PATTERN SINCE-LINE: the first new history line matching, printed
  local deadline=$(( $(date +%s) + 120 )) line
  until line="$(gatekeeper history demo | tail -n +"$(($2 + 1))" | grep -E -m1 "$1")"; do
    [ "$(date +%s)" -lt "$deadline" ] || die "no '$1' in demo's history within 120 s (logs: $LOGS)"
    sleep 0.5
  done
  info "history: ${line#* }"
}

[ "$(docker info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null)" != "active" ] || docker service rm demo >/dev/null 2>&1 || true
old="$(docker ps -aq --filter label=proxystack.demo=1)"
[ -z "$old" ] || docker rm -f $old >/dev/null
gatekeeper mode demo auto >/dev/null 2>&1 || true     # a previous run's last chapter left it progressive

step "Deploy demo v1: registered by registrator, tested by gatekeeper, admitted, served by nginx"
deploy v1 demo:v1 || die "v1 did not pass its integration tests"
wait_served v1
# HTTPS on the same route, with a certificate from the stack's own CA (trusted by this curl only).
CA_ROOT="$STATE/ca/root.crt"
PROXY_TLS_LISTEN="${PROXY_TLS_LISTEN:-127.0.0.1:8443}"
TLS_URL="https://localhost:${PROXY_TLS_LISTEN##*:}/demo/1"
https_answer="$(curl -sS --http2 --cacert "$CA_ROOT" -w ' (HTTP/%{http_version})' "$TLS_URL")" \
  || die "HTTPS through the proxy failed: curl --cacert $CA_ROOT $TLS_URL (logs: $LOGS/proxy-reloader.log)"
info "\$ curl --cacert $CA_ROOT $TLS_URL  ->  $https_answer"

step "Deploy demo v2: tested, then it takes over; v1 drains and stops"
deploy v2 demo:v2 || die "v2 did not pass its integration tests"
wait_served v2
for _ in $(seq 1 50); do [ "$(docker inspect -f '{{.State.Running}}' demo-v1 2>/dev/null)" = "true" ] || break; sleep 0.2; done
info "demo-v1 running: $(docker inspect -f '{{.State.Running}}' demo-v1 2>/dev/null || echo gone)"

step "Deploy a broken build (v3): its integration tests fail, it never receives a request"
if deploy v3 demo:v3; then die "the broken v3 passed its tests; the gate is not working"; fi
for _ in $(seq 1 20); do curl -s -o /dev/null "$PROXY/demo/1"; done
info "still served: $(served_version); requests that reached v3 through the proxy: $(curl -s "http://$(docker port demo-v3 8080 | head -1)/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["proxied"])')"

step "A release bad under real traffic (v4: 5 % of proxied requests fail, its tests pass): progressive mode rolls it back"
gatekeeper mode demo progressive --step 20 --interval 5 --threshold 2 --min-requests 30 | sed 's/^/    /'
"$VENV/bin/python" "$ROOT/scripts/traffic.py" --url "$PROXY/demo/1" --seconds 120 >"$STATE/traffic-v4.txt" 2>&1 &
traffic=$!
before="$(gatekeeper history demo | wc -l)"
docker rm -f demo-v4 >/dev/null 2>&1 || true
info "\$ docker run -d -P --name demo-v4 ${LABELS[*]} --label gatekeeper.version=v4 -e DEMO_VERSION=v4 -e DEMO_ERROR_RATE=5% demo:v2"
docker run -d -P --name demo-v4 "${LABELS[@]}" --label gatekeeper.version=v4 -e DEMO_VERSION=v4 -e DEMO_ERROR_RATE=5% demo:v2 >/dev/null
gatekeeper wait demo --version v4 --timeout 180 | sed 's/^/    gatekeeper: /'
shown="$before"; deadline=$(( $(date +%s) + 120 ))
while :; do                      # each analysis step as it comes, until the rollback
  history="$(gatekeeper history demo)"
  printf '%s\n' "$history" | tail -n +"$((shown + 1))" | grep -E " analysis| aborted " | sed 's/^[0-9-]* /    /' || true
  shown="$(printf '%s\n' "$history" | wc -l)"
  printf '%s\n' "$history" | tail -n +"$((before + 1))" | grep -q "aborted.*gatekeeper (analysis)" && break
  [ "$(date +%s)" -lt "$deadline" ] || { kill "$traffic" 2>/dev/null || true; die "v4 was not rolled back within 120 s (logs: $LOGS)"; }
  sleep 1
done
kill "$traffic" 2>/dev/null || true; wait "$traffic" 2>/dev/null || true
info "clients while v4 had its share: $(cat "$STATE/traffic-v4.txt")"
info "clients in the 5 s after the rollback: $("$VENV/bin/python" "$ROOT/scripts/traffic.py" --url "$PROXY/demo/1" --seconds 5)"
gatekeeper mode demo auto >/dev/null

step "Swarm: demo as a Swarm service. Every task passes the gate; scaled, updated, healed, autoscaled"
bash "$ROOT/scripts/stack.sh" swarm | tail -n +2
# A service has one owner: plain containers or a Swarm service, never both (a Swarm task of a
# service that plain containers serve is kept out, with the reason). So the plain ones go first.
info "\$ docker rm -f demo-v1 demo-v2 demo-v3 demo-v4      (one owner per service: the plain containers go first)"
docker rm -f $(docker ps -aq --filter label=proxystack.demo=1) >/dev/null
info "\$ docker service create --name demo --replicas 2 <gate and health flags, docs/guides/swarm.md> demo:v2"
docker service create --detach --name demo --replicas 2 "${SWARM[@]}" demo:v2 >/dev/null
wait_admitted 2
wait_served v2
"$VENV/bin/python" "$ROOT/scripts/traffic.py" --url "$PROXY/demo/1" --seconds 600 --threads 2 --rate 40 >"$STATE/traffic-swarm.txt" 2>&1 &
traffic=$!
info "2 tasks tested and admitted; they serve: $(served_version)"
info "\$ gatekeeper scale demo 3"
gatekeeper scale demo 3 | sed 's/^/    /'
wait_admitted 3
info "3 tasks admitted: $(replicas running) running, each tested before its first request"
before="$(gatekeeper history demo | wc -l)"
info "\$ docker service update --image demo:v3 demo      (v3 fails its integration tests)"
docker service update --detach --no-resolve-image --image demo:v3 demo >/dev/null
wait_history "update rolled back" "$before"
wait_admitted 3
info "still served: $(served_version), by $(replicas admitted) admitted tasks"
before="$(gatekeeper history demo | wc -l)"
port="$(gatekeeper status demo --json | python3 -c 'import json,sys; print(next(i["port"] for i in json.load(sys.stdin)["services"][0]["instances"] if i["serving"]))')"
info "\$ curl -X POST 127.0.0.1:$port/health/fail      (one task's /health starts failing)"
curl -s -X POST "127.0.0.1:$port/health/fail" >/dev/null
wait_history "healing: replaced" "$before"
wait_admitted 3
info "its replacement was tested and admitted: $(replicas admitted) tasks serve"
before="$(gatekeeper history demo | wc -l)"
info "\$ docker service update --label-add gatekeeper.scale=min=1,max=4,rps=150,cooldown=30 demo"
docker service update --detach --label-add gatekeeper.scale=min=1,max=4,rps=150,cooldown=30 demo >/dev/null
info "load: 8 clients as fast as they can; the target is 150 req/s per admitted task, 4 at most"
"$VENV/bin/python" "$ROOT/scripts/traffic.py" --url "$PROXY/demo/1" --seconds 25 --threads 8 >"$STATE/traffic-burst.txt" 2>&1 &
burst=$!
wait_history "scaled.*autoscaler" "$before"
wait "$burst" 2>/dev/null || true
info "replicas now: desired $(replicas desired), admitted $(replicas admitted); back to 1 once the load is gone and the 30 s cooldown is over"
kill "$traffic" 2>/dev/null || true; wait "$traffic" 2>/dev/null || true
info "clients during the Swarm chapter: $(cat "$STATE/traffic-swarm.txt"); the burst: $(cat "$STATE/traffic-burst.txt")"

step "Where to look"
info "Dashboard:      http://${DASHBOARD_LISTEN:-127.0.0.1:8005}/  (log in with the token in $STATE/tokens/viewer.token, or the operator's)"
info "Consul UI:      http://127.0.0.1:8500/ui/dc1/services/demo (log in with the token in $CONSUL_HTTP_TOKEN_FILE)"
info "The service:    curl $PROXY/demo/1"
info "Over HTTPS:     curl --cacert $STATE/ca/root.crt https://localhost:${PROXY_TLS_LISTEN##*:}/demo/1   (the stack's own CA)"
info "Gate verdicts:  export CONSUL_HTTP_TOKEN_FILE=$CONSUL_HTTP_TOKEN_FILE; $VENV/bin/gatekeeper status demo"
info "Proxy status:   curl http://127.0.0.1:8001/status"
info "Metrics:        http://127.0.0.1:9090/graph?g0.expr=proxystack%3Asuccess_ratio%3Arate30s (Prometheus; every daemon's at /targets)"
info "Logs:           $LOGS/ (nginx: $STATE/nginx/logs/)"
info "Replicas:       $VENV/bin/gatekeeper scale demo N; docker service ps demo"
info "Stop it all:    make stop"
echo
gatekeeper status demo
