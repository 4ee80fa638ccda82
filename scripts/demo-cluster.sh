#!/usr/bin/env bash
# The demo on several hosts: scripts/cluster.sh up (three Consul servers, three Docker hosts),
# demo v1 on h1 and h3 through a gatekeeper on another host, v2 deployed to h2's engine over TLS
# (v1 drained and stopped on each host by that host's registrator), the Consul leader killed and
# a host stopped under traffic through every proxy; then everything the cluster made is removed
# (KEEP=1 leaves it up; `scripts/cluster.sh down` removes it later).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLUSTER="$ROOT/scripts/cluster.sh"
CSTATE="${PROXYSTACK_CLUSTER_STATE:-$ROOT/.cluster}"
NET="10.210.0"
LABELS=(--label SERVICE_NAME=demo --label gatekeeper.tests=demo-test:latest --label proxystack.demo=1)
PIDS=()

finish() {
  local code=$?
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ "${KEEP:-0}" = 1 ]; then info "KEEP=1: the cluster stays up; \`scripts/cluster.sh down\` removes it"
  else bash "$CLUSTER" down; fi
  exit "$code"
}
trap finish EXIT

hdocker() { local h="$1"; shift; docker -H "unix:///run/psc-$h/docker.sock" "$@"; }
export CONSUL_CACERT="$CSTATE/tls/ca/ca.pem"    # the cluster's Consul speaks HTTPS only, with a CA of its own
gk() { gatekeeper --consul "$(consul_addr)" --consul-token-file "$CSTATE/tokens/operator.token" "$@"; }
consul_addr() { local s; for s in 11 12 13; do [ -s "$CSTATE/run/consul-s$s.pid" ] && kill -0 "$(cat "$CSTATE/run/consul-s$s.pid")" 2>/dev/null && { echo "https://127.0.0.$s:8501"; return; }; done; }
served() { curl -s --max-time 3 "http://$NET.2${1#h}:8000/demo/1" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("version",""))' 2>/dev/null; }
every_proxy() { local h; for h in h1 h2 h3; do printf '%s ' "$h:$(served "$h")"; done; }
traffic() {   # traffic NAME HOST SECONDS: background load through one proxy, counts in LOGS/NAME.json
  python3 "$ROOT/scripts/traffic.py" --url "http://$NET.2${2#h}:8000/demo/1" --seconds "$3" --threads 2 --rate 40 --json \
    >"$LOGS/$1.json" 2>/dev/null &
  PIDS+=($!)
}
counted() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%d requests, %d failed" % (d["requests"], d["failed"]))' "$LOGS/$1.json"; }
not_serving_on() { ! serving_on "$1"; }
v1_stopped() { [ "$(hdocker h1 inspect -f '{{.State.Running}}' demo-v1)$(hdocker h3 inspect -f '{{.State.Running}}' demo-v1)" = falsefalse ]; }
GATE_CMD="grep -qx open /tmp/proxystack-gate"
swarm_images() { hdocker h1 service ps demo --filter desired-state=running --format '{{.Image}} {{.CurrentState}}' | awk '$2 == "Running" {print $1}' | sort | uniq -c | awk '{print $1, $2}'; }
tasks_gated() {   # tasks_gated VERSION N: N running tasks of demo:VERSION, each admitted
  [ "$(swarm_images)" = "$2 demo:$1" ] && [ "$(gk status demo --json | python3 -c 'import json,sys; print(sum(1 for i in json.load(sys.stdin)["services"][0]["instances"] if i["version"] == sys.argv[1] and i["serving"]))' "$1")" = "$2" ]
}
update_done() { [ "$(hdocker h1 service inspect demo --format '{{.UpdateStatus.State}}')" = "$1" ] && tasks_gated "$2" 3; }
serving_on() {   # serving_on HOST: true when an instance on HOST serves demo
  gk status demo --json | python3 -c 'import json,sys; sys.exit(0 if any(i["host"] == sys.argv[1] and i["serving"] for i in json.load(sys.stdin)["services"][0]["instances"]) else 1)' "$1"
}

step "1. the cluster"
bash "$CLUSTER" up 3
info "Consul UI: https://127.0.0.11:8501/ui/ (CA: $CONSUL_CACERT, token: $CSTATE/tokens/operator.token); every host is a node"
info "Consul as production runs it: gossip encrypted, TLS on RPC with every certificate checked, HTTPS only, one agent token per node"

step "2. demo v1 on h1 and h3; gatekeeper (leader on h1 or h2) tests each instance where it runs"
for h in h1 h3; do
  info "\$ docker -H unix:///run/psc-$h/docker.sock run -d -P --name demo-v1 ${LABELS[*]} demo:v1"
  hdocker "$h" run -d -P --name demo-v1 "${LABELS[@]}" demo:v1 >/dev/null
done
gk wait demo --version v1 --timeout 180 | sed 's/^/    gatekeeper: /'
info "every proxy answers: $(every_proxy)"
gk status demo | sed 's/^/    /'

step "3. demo v2 to h2's engine over TLS (client certificate from scripts/certs.sh); v1 drains"
info "\$ docker --tlsverify -H tcp://$NET.22:2376 run -d -P --name demo-v2 ... demo:v2"
docker --tlsverify --tlscacert "$CSTATE/certs/client/ca.pem" --tlscert "$CSTATE/certs/client/cert.pem" \
  --tlskey "$CSTATE/certs/client/key.pem" -H "tcp://$NET.22:2376" run -d -P --name demo-v2 "${LABELS[@]}" demo:v2 >/dev/null
gk wait demo --version v2 --timeout 180 | sed 's/^/    gatekeeper: /'
info "every proxy answers: $(every_proxy)"
wait_for "v1 to drain and stop on h1 and h3" 60 v1_stopped
info "v1 drained; each host's registrator stopped its own v1 container:"
for h in h1 h3; do info "  $h: demo-v1 $(hdocker "$h" inspect -f '{{.State.Status}}' demo-v1)"; done
gk status demo | sed 's/^/    /'

step "4. the Consul leader killed under traffic through every proxy"
for h in h1 h2 h3; do traffic "leader-$h" "$h" 20; done
sleep 3
leader="$(curl -s --cacert "$CONSUL_CACERT" "$(consul_addr)/v1/status/leader" | tr -d '"' | cut -d: -f1)"
info "leader is $leader; killing it"
t0=$(date +%s.%N)                          # the clock starts with the kill (stop-server sends SIGKILL first)
bash "$CLUSTER" stop-server "${leader##*.}"
until new="$(curl -s --cacert "$CONSUL_CACERT" "$(consul_addr)/v1/status/leader" | tr -d '"' | cut -d: -f1)"; [ -n "$new" ] && [ "$new" != "$leader" ]; do sleep 0.1; done
info "$new leads after $(python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')") s"
bash "$CLUSTER" start-server "${leader##*.}"
wait "${PIDS[@]}"; PIDS=()
for h in h1 h2 h3; do info "through $h's proxy: $(counted "leader-$h")"; done

step "5. host h3 stopped (network, agent, engine, registrator, proxy) under traffic through h1 and h2"
hdocker h3 run -d -P --name demo-v2 "${LABELS[@]}" demo:v2 >/dev/null
wait_for "h3's demo v2 to pass its gate" 120 serving_on h3
info "h3's demo v2 passed its gate and serves beside h2's"
for h in h1 h2; do traffic "host-$h" "$h" 25; done
sleep 3
t0=$(date +%s.%N)
bash "$CLUSTER" stop-host h3
wait_for "h3's instances to leave service" 60 not_serving_on h3
info "Consul marked h3 failed $(python3 -c "print(f'{$(date +%s.%N) - $t0:.0f}')") s after it stopped; its instances serve no more:"
gk status demo | grep -E "INSTANCE|h3" | sed 's/^/    /'
wait "${PIDS[@]}"; PIDS=()
for h in h1 h2; do info "through $h's proxy: $(counted "host-$h")"; done
bash "$CLUSTER" start-host h3
info "its containers stopped with it, and their registrations are gone:"
gk status demo | sed 's/^/    /'

step "6. one swarm across the three hosts: demo moves from plain containers to a Swarm service"
bash "$CLUSTER" swarm | sed 's/^ *//; s/^/    /'
for h in h1 h2 h3; do hdocker "$h" rm -f $(hdocker "$h" ps -aq --filter label=proxystack.demo) >/dev/null 2>&1 || true; done
info "plain demo containers removed (one owner per service); the Swarm service takes over"
info "\$ docker -H h1 service create --name demo --replicas 3 --publish mode=host,target=8080 --health-cmd '$GATE_CMD' ... demo:v1"
hdocker h1 service create --detach --name demo --replicas 3 --publish mode=host,target=8080 --no-resolve-image \
  --container-label SERVICE_NAME=demo --container-label gatekeeper.tests=demo-test:latest --container-label proxystack.demo=1 \
  --label proxystack.demo=1 --placement-pref spread=node.labels.host --health-cmd "$GATE_CMD" --health-interval 1s \
  --health-retries 3 --health-start-period 120s --update-order start-first --update-failure-action rollback \
  --restart-delay 1s demo:v1 >/dev/null
wait_for "a gated v1 task on every host" 240 tasks_gated v1 3
gk status demo | sed 's/^/    /'
info "every proxy answers: $(every_proxy)"

step "7. a rolling update across hosts, each new task through the gate, its marker written by its own host"
for h in h1 h2 h3; do traffic "update-$h" "$h" 400; done
info "\$ docker -H h2 service update --image demo:v2 demo   (from another manager)"
hdocker h2 service update --detach --image demo:v2 demo >/dev/null 2>&1
wait_for "every task replaced by a gated v2 one" 300 update_done completed v2
for h in h1 h2 h3; do info "  $h's registrator: $(grep -c 'gate marker open' "$CSTATE/logs/registrator-$h.log") gate marker(s) opened"; done
info "every proxy answers: $(every_proxy)"
info "\$ docker service update --image demo:v3 demo   (v3 fails its integration tests)"
hdocker h3 service update --detach --image demo:v3 demo >/dev/null 2>&1
wait_for "Swarm to roll v3 back" 300 update_done rollback_completed v2
gk history demo | grep "update rolled back" | tail -n 1 | sed 's/^/    /'
for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
wait "${PIDS[@]}" 2>/dev/null; PIDS=()
for h in h1 h2 h3; do info "through $h's proxy during the update and the rollback: $(counted "update-$h")"; done

step "done; tearing the cluster down (KEEP=1 keeps it)"
