#!/usr/bin/env bash
# The main job's story, on a running stack (scripts/stack.sh up):
# demo v1 is deployed through the gate and served; v2 takes over; a broken v3 is refused; a v4
# that passes its tests but fails real traffic is rolled back by progressive analysis.
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

old="$(docker ps -aq --filter label=proxystack.demo=1)"
[ -z "$old" ] || docker rm -f $old >/dev/null
gatekeeper mode demo auto >/dev/null 2>&1 || true     # a previous run's last chapter left it progressive

step "Deploy demo v1: registered by registrator, tested by gatekeeper, admitted, served by nginx"
deploy v1 demo:v1 || die "v1 did not pass its integration tests"
wait_served v1

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

step "Where to look"
info "Consul UI:      http://127.0.0.1:8500/ui/dc1/services/demo (log in with the token in $CONSUL_HTTP_TOKEN_FILE)"
info "The service:    curl $PROXY/demo/1"
info "Gate verdicts:  export CONSUL_HTTP_TOKEN_FILE=$CONSUL_HTTP_TOKEN_FILE; $VENV/bin/gatekeeper status demo"
info "Proxy status:   curl http://127.0.0.1:8001/status"
info "Metrics:        http://127.0.0.1:9090/graph?g0.expr=proxystack%3Asuccess_ratio%3Arate30s (Prometheus; every daemon's at /targets)"
info "Logs:           $LOGS/ (nginx: $STATE/nginx/logs/)"
info "Stop it all:    make stop"
echo
gatekeeper status demo
