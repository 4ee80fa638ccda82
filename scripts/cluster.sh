#!/usr/bin/env bash
# Several hosts on this one machine: a three-server Consul cluster and N Docker hosts, each a
# network namespace with its own Consul client agent, dockerd, registrator and proxy; gatekeeper
# on the first two hosts, leader-elected across them.
#   scripts/cluster.sh up [HOSTS] | down | status | env HOST | tokens (any revoked token made anew)
#   scripts/cluster.sh swarm: the hosts' engines joined in one swarm, each a manager
#   scripts/cluster.sh stop-host HOST | start-host HOST | cut HOST | heal HOST | stop-server N | start-server N
# Consul runs as production runs it: gossip encrypted, TLS on RPC with every certificate checked
# (verify_incoming_rpc, verify_outgoing, the servers' names), the API on HTTPS only, and ACLs
# (default deny) with one agent token per node; the CA and certificates come from scripts/certs.sh.
# Addresses (10.210.0.0/24, routed by this namespace; nothing leaves this machine):
#   Consul servers 10.210.0.11-13 (HTTPS on 127.0.0.11-13:8501, this namespace only)
#   host hN        10.210.0.2N: proxy :8000, its agent's HTTPS on 127.0.0.1:8501 inside hN only,
#                  dockerd unix:///run/psc-hN/docker.sock (h2: also TLS with client certificates
#                  on tcp://10.210.0.22:2376, certificates from scripts/certs.sh)
# Everything it makes lives in .cluster/ and /var/lib/proxystack-cluster/; `down` removes it all.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CSTATE="${PROXYSTACK_CLUSTER_STATE:-$ROOT/.cluster}"
CRUN="$CSTATE/run"; CLOGS="$CSTATE/logs"; TOKENS="$CSTATE/tokens"; TLS="$CSTATE/tls"
# Every Consul client started here (the stack's parts, acl_setup) trusts the cluster's CA.
export CONSUL_CACERT="$TLS/ca/ca.pem"
API_PORT=8501
DATA="/var/lib/proxystack-cluster"            # dockerd data-roots: overlay2 wants a plain filesystem
NET="10.210.0"
SERVERS=(11 12 13)
NGINX_BIN="$(command -v nginx || echo /usr/sbin/nginx)"
IMAGES=(demo:v1 demo:v2 demo:v3 demo-test:latest)
DEMO_LABEL="proxystack.demo"
mkdir -p "$CRUN" "$CLOGS"
LOGS="$CLOGS"                                 # where wait_for's failures point

host_ip()   { echo "$NET.2${1#h}"; }
ns()        { echo "psc-$1"; }
in_host()   { local h="$1"; shift; nsenter --net="/var/run/netns/$(ns "$h")" -- "$@"; }
sock()      { echo "/run/psc-$1/docker.sock"; }
hdocker()   { local h="$1"; shift; docker -H "unix://$(sock "$h")" "$@"; }
hosts_made() { cat "$CSTATE/hosts" 2>/dev/null || true; }

running() { local f="$CRUN/$1.pid"; [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; }
start_bg() {   # start_bg NAME COMMAND...: own session, log and pid file by NAME
  local name="$1"; shift
  if running "$name"; then info "$name already running (pid $(cat "$CRUN/$name.pid"))"; return 0; fi
  setsid "$@" >>"$CLOGS/$name.log" 2>&1 < /dev/null &
  echo $! >"$CRUN/$name.pid"
}
kill_pid() {   # kill_pid NAME SIGNAL: signal the process and wait up to 15 s for it to go
  local f="$CRUN/$1.pid" pid
  [ -s "$f" ] || return 0
  pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "-$2" "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}
kill_prefix_nginx() {   # any nginx still running under HOST's prefix (a master its pid file lost)
  local pid
  for pid in $(pgrep -f -- "nginx -p $CSTATE/$1/nginx -c" || true); do kill -KILL -- "-$pid" 2>/dev/null || true; done
}
kill_host_leftovers() {   # HOST's daemons whose pid file was lost: found by the host's own paths
  local h="$1" pids mine
  mine="($DATA/$h |$CSTATE/$h/|/run/psc-$h/|gatekeeper@$h( |$))"
  kill_prefix_nginx "$h"
  pids="$(pgrep -f -- "$mine" || true)"
  [ -n "$pids" ] || return 0
  info "$h: stopping daemons no pid file names (pids $(echo $pids))"
  kill -TERM $pids 2>/dev/null || true
  for _ in $(seq 1 100); do pgrep -f -- "$mine" >/dev/null || return 0; sleep 0.1; done
  kill -KILL $(pgrep -f -- "$mine" || true) 2>/dev/null || true
}
ccurl() { curl -sf --cacert "$CONSUL_CACERT" "$@"; }    # the Consul API, over HTTPS

# --- Consul's TLS material and settings -------------------------------------------------------
tls_up() {   # once: the CA, a certificate per server and per host, the gossip key
  local s h
  { bash "$ROOT/scripts/certs.sh" ca "$TLS/ca"
    for s in "${SERVERS[@]}"; do
      bash "$ROOT/scripts/certs.sh" peer "$TLS/ca" "$TLS/server-$s" "DNS:server.dc1.consul,IP:$NET.$s,IP:127.0.0.$s"
    done
    for h in $(hosts_made); do
      bash "$ROOT/scripts/certs.sh" peer "$TLS/ca" "$TLS/$h" "DNS:client.dc1.consul,DNS:localhost,IP:127.0.0.1,IP:$(host_ip "$h")"
    done; } >/dev/null
  [ -s "$TLS/gossip.key" ] || (umask 077; consul keygen >"$TLS/gossip.key")
}

agent_config() {   # agent_config NAME [TOKEN_FILE]: NAME's settings in a private file, printed
  local name="$1" token_file="${2:-}" f="$CSTATE/consul-$1.hcl" token=""
  [ -n "$token_file" ] && [ -s "$token_file" ] && token="tokens { agent = \"$(cat "$token_file")\" }"
  (umask 077; cat >"$f" <<EOF
encrypt = "$(cat "$TLS/gossip.key")"
ca_file = "$TLS/ca/ca.pem"
cert_file = "$TLS/$name/cert.pem"
key_file = "$TLS/$name/key.pem"
verify_incoming_rpc = true
verify_outgoing = true
verify_server_hostname = true
ports { http = -1, https = $API_PORT }
check_update_interval = "0s"
limits { http_max_conns_per_client = 4096 }
acl { enabled = true, default_policy = "deny", enable_token_persistence = true $token }
EOF
  )
  echo "$f"
}

# --- the network -----------------------------------------------------------------------------
# Routed, not bridged: each host is a namespace behind a veth pair, and this namespace routes
# between them (the engine's br_netfilter would put bridged frames through this namespace's
# connection tracking, which dropped some hosts' answers half-way through a handshake). The
# Consul servers' addresses are on this namespace's loopback.
net_up() {
  # Nothing for these addresses leaves this machine, a host that is down included.
  ip route replace unreachable "$NET.0/24"
  local a
  for a in 1 "${SERVERS[@]}"; do
    ip addr show dev lo | grep -q " $NET.$a/32" || ip addr add "$NET.$a/32" dev lo
  done
  sysctl -qw net.ipv4.ip_forward=1
  # The engine's FORWARD policy is DROP; traffic between two hosts is forwarded here.
  iptables -C FORWARD -i 'psc-+' -o 'psc-+' -j ACCEPT 2>/dev/null || iptables -I FORWARD -i 'psc-+' -o 'psc-+' -j ACCEPT
}

host_net_up() {
  local h="$1" n ip; n="$(ns "$h")"; ip="$(host_ip "$h")"
  [ -e "/var/run/netns/$n" ] || ip netns add "$n"
  if ! ip link show "$n" >/dev/null 2>&1; then
    ip link add "$n" type veth peer name eth0 netns "$n"
    ip link set "$n" up
    ip route add "$ip/32" dev "$n" src "$NET.1"
    in_host "$h" ip addr add "$ip/32" dev eth0
    in_host "$h" ip link set eth0 up
    in_host "$h" ip link set lo up
    in_host "$h" ip route add "$NET.1/32" dev eth0 src "$ip"
    in_host "$h" ip route add default via "$NET.1" src "$ip"
  fi
  ip link set "$n" up
  ip route replace "$ip/32" dev "$n" src "$NET.1"     # gone with the link while it was down
}

# --- Consul: three servers, then one client agent per host --------------------------------------
server_up() {   # server_up N: the Consul server at $NET.N (its HTTP API on 127.0.0.N)
  local n="$1" join="" s
  for s in "${SERVERS[@]}"; do join="$join -retry-join $NET.$s"; done
  mkdir -p "$CSTATE/consul-s$n"
  start_bg "consul-s$n" consul agent -server -bootstrap-expect 3 -data-dir "$CSTATE/consul-s$n" -node "server-$n" \
    -bind "$NET.$n" -client "127.0.0.$n" -ui -dns-port -1 $join -log-level warn \
    -hcl 'performance { raft_multiplier = 1 }' -config-file "$(agent_config "server-$n" "$TOKENS/agent-server-$n.token")"
}

servers_up() {
  step "Consul: three servers ($NET.11-13), a Raft quorum, TLS and gossip encryption; UI https://127.0.0.11:$API_PORT/ui/"
  local s
  tls_up
  for s in "${SERVERS[@]}"; do server_up "$s"; done
  wait_for "a Consul leader" 90 sh -c "curl -sf --cacert '$CONSUL_CACERT' https://127.0.0.11:$API_PORT/v1/status/leader | grep -q ':'"
  info "leader $(ccurl "https://127.0.0.11:$API_PORT/v1/status/leader")"
  # A new cluster runs legacy ACLs until its servers agree on the current system (seconds).
  wait_for "the ACL set-up (see $CLOGS/acl.log)" 90 tokens
  info "ACLs on (default deny), tokens of its own for each node's agent and each host's registrator; tokens in $TOKENS/, CA $CONSUL_CACERT"
}

tokens() {   # every part's token, made anew if revoked, and each running agent given its own
  local s h boot nodes=()
  for s in "${SERVERS[@]}"; do nodes+=(--node "server-$s"); done
  for h in $(hosts_made); do nodes+=(--host "$h"); done
  "$VENV/bin/python" -m catalog.acl_setup --consul "https://127.0.0.$(live_server):$API_PORT" --tokens "$TOKENS" \
    "${nodes[@]}" >>"$CLOGS/acl.log" 2>&1 || return 1
  boot="$(cat "$TOKENS/bootstrap.token")"
  for s in "${SERVERS[@]}"; do   # a server starts before its token exists
    running "consul-s$s" || continue
    ccurl -X PUT -H "X-Consul-Token: $boot" -d "{\"Token\": \"$(cat "$TOKENS/agent-server-$s.token")\"}" \
      "https://127.0.0.$s:$API_PORT/v1/agent/token/agent" >/dev/null || { echo "could not give server $s its agent token" >&2; return 1; }
  done
  for h in $(hosts_made); do     # a host's agent is given a token made anew (its file has it for a restart)
    running "consul-$h" || continue
    in_host "$h" curl -sf --cacert "$CONSUL_CACERT" -X PUT -H "X-Consul-Token: $boot" \
      -d "{\"Token\": \"$(cat "$TOKENS/agent-$h.token")\"}" "https://127.0.0.1:$API_PORT/v1/agent/token/agent" >/dev/null \
      || { echo "could not give $h's agent its token" >&2; return 1; }
  done
}

live_server() { local s; for s in "${SERVERS[@]}"; do running "consul-s$s" && { echo "$s"; return; }; done; echo "${SERVERS[0]}"; }

agent_up() {
  local h="$1" join="" s
  for s in "${SERVERS[@]}"; do join="$join -retry-join $NET.$s"; done
  mkdir -p "$CSTATE/$h/consul"
  start_bg "consul-$h" nsenter --net="/var/run/netns/$(ns "$h")" -- consul agent -data-dir "$CSTATE/$h/consul" \
    -node "$h" -bind "$(host_ip "$h")" -client 127.0.0.1 -dns-port -1 $join -log-level warn \
    -config-file "$(agent_config "$h" "$TOKENS/agent-$h.token")"
  # Up when it knows the leader (a node left in the catalog from before says nothing of that).
  wait_for "$h's Consul agent" 60 in_host "$h" sh -c "curl -sf --cacert '$CONSUL_CACERT' https://127.0.0.1:$API_PORT/v1/status/leader | grep -q ':'"
}

# --- Docker: one engine per host ---------------------------------------------------------------
dockerd_up() {
  local h="$1" ip extra=()
  ip="$(host_ip "$h")"
  mkdir -p "$DATA/$h" "/run/psc-$h/exec"
  if [ "$h" = h2 ]; then      # the remote engine: TLS with client certificates only
    { bash "$ROOT/scripts/certs.sh" ca "$CSTATE/certs"
      bash "$ROOT/scripts/certs.sh" server "$CSTATE/certs" "$CSTATE/certs/$h" "IP:$ip,DNS:$h"
      bash "$ROOT/scripts/certs.sh" client "$CSTATE/certs" "$CSTATE/certs/client" cluster-client; } >/dev/null
    extra=(--tlsverify --tlscacert "$CSTATE/certs/$h/ca.pem" --tlscert "$CSTATE/certs/$h/cert.pem"
           --tlskey "$CSTATE/certs/$h/key.pem" -H "tcp://$ip:2376")
  fi
  # A Swarm task's image is the one loaded here: no registry is reached from a host (a pull
  # attempt would hold each new task in "preparing" for its time-out).
  start_bg "dockerd-$h" env DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 nsenter --net="/var/run/netns/$(ns "$h")" -- dockerd --data-root "$DATA/$h" \
    --exec-root "/run/psc-$h/exec" -H "unix://$(sock "$h")" --pidfile "/run/psc-$h/dockerd.pid" --ip "$ip" \
    --cgroup-parent "psc-$h" --bip 172.31.2${h#h}.1/24 "${extra[@]}"
  wait_for "$h's Docker engine" 60 hdocker "$h" info
}

images_to() {   # images_to HOST: the demo images, from the archive `up` saved once for every host
  local h="$1" missing=() i
  for i in "${IMAGES[@]}"; do hdocker "$h" image inspect "$i" >/dev/null 2>&1 || missing+=("$i"); done
  [ "${#missing[@]}" -eq 0 ] && return 0
  hdocker "$h" load -i "$CSTATE/images.tar" >/dev/null || die "could not load ${missing[*]} into $h"
  info "$h: loaded ${missing[*]}"
}

# --- the stack's parts on a host ----------------------------------------------------------------
parts_up() {
  local h="$1" ip n prefix
  ip="$(host_ip "$h")"; n="/var/run/netns/$(ns "$h")"; prefix="$CSTATE/$h/nginx"
  mkdir -p "$prefix/logs"
  start_bg "registrator-$h" nsenter --net="$n" -- "$VENV/bin/registrator" --consul "https://127.0.0.1:$API_PORT" \
    --consul-token-file "$TOKENS/registrator-$h.token" --docker "unix://$(sock "$h")" --address "$ip" --hostname "$h" \
    --explicit --exclude-label proxystack.test
  in_host "$h" "$VENV/bin/proxy-reloader" --consul "https://127.0.0.1:$API_PORT" --consul-token-file "$TOKENS/proxy-reloader.token" \
    --nginx-prefix "$prefix" --listen "$ip:8000" --tls-listen "$ip:8443" --read-timeout 3 --once >>"$CLOGS/proxy-reloader-$h.log" 2>&1 \
    || die "$h: could not render the first nginx config (see $CLOGS/proxy-reloader-$h.log)"
  if ! running "nginx-$h"; then
    kill_prefix_nginx "$h"
    rm -f "$prefix/admin/push.sock"
    in_host "$h" "$NGINX_BIN" -p "$prefix" -c "$prefix/nginx.conf" 2>>"$CLOGS/nginx-$h.log" || die "$h: nginx did not start"
    wait_for "$h's nginx" 10 test -s "$prefix/nginx.pid"
    cp "$prefix/nginx.pid" "$CRUN/nginx-$h.pid"
  fi
  start_bg "proxy-reloader-$h" nsenter --net="$n" -- "$VENV/bin/proxy-reloader" --consul "https://127.0.0.1:$API_PORT" \
    --consul-token-file "$TOKENS/proxy-reloader.token" --nginx-prefix "$prefix" --listen "$ip:8000" --read-timeout 3 \
    --tls-listen "$ip:8443" --admin 127.0.0.1:8001 --report-check
  if [ "$h" = h1 ] || [ "$h" = h2 ]; then
    start_bg "gatekeeper-$h" env DOCKER_HOST="unix://$(sock "$h")" nsenter --net="$n" -- "$VENV/bin/gatekeeper" \
      --consul "https://127.0.0.1:$API_PORT" --consul-token-file "$TOKENS/gatekeeper.token" run --id "gatekeeper@$h" \
      --drain-seconds 2 --heal-after 3 --heal-backoff 2
  fi
  wait_for "$h's proxy" 30 curl -s -o /dev/null "http://$ip:8000/"
}

host_up() {
  local h="$1"
  step "host $h ($(host_ip "$h")): Consul agent, dockerd, registrator, proxy$([ "$h" = h1 ] || [ "$h" = h2 ] && echo ', gatekeeper')"
  host_net_up "$h"
  agent_up "$h"
  dockerd_up "$h"
  images_to "$h"
  parts_up "$h"
  info "$h: proxy http://$(host_ip "$h"):8000/, engine unix://$(sock "$h")$([ "$h" = h2 ] && echo " and tcp://$(host_ip h2):2376 (TLS)")"
}

up() {
  local n="${1:-3}" i
  [[ "$n" =~ ^[2-9]$ ]] || die "HOSTS must be 2 to 9, got '$n'"
  command -v consul >/dev/null || die "consul is missing: run scripts/install.sh all first"
  for i in "${IMAGES[@]}"; do docker image inspect "$i" >/dev/null 2>&1 || die "image $i is missing: run scripts/install.sh all first"; done
  # No cluster recorded: any daemon still running on a host's paths is left from a run whose
  # state was lost, and would hold that host's addresses and files.
  if [ ! -s "$CSTATE/hosts" ]; then for i in $(seq 1 "$n"); do kill_host_leftovers "h$i"; done; fi
  step "network: one namespace per host, routed here ($NET.0/24)"
  net_up
  : >"$CSTATE/hosts.new"
  for i in $(seq 1 "$n"); do echo "h$i" >>"$CSTATE/hosts.new"; done
  sort -u "$CSTATE/hosts.new" <(hosts_made) >"$CSTATE/hosts"; rm -f "$CSTATE/hosts.new"
  servers_up
  docker save "${IMAGES[@]}" -o "$CSTATE/images.tar" || die "could not save ${IMAGES[*]}"
  # The hosts come up side by side: each one's agent, engine and proxy wait on nothing of
  # another's. Each host's lines are printed once it is up, in host order.
  local pids=() failed=""
  # interrupted: the hosts still coming up stop too (what they started, `down` removes)
  trap 'kill "${pids[@]}" 2>/dev/null; rm -f "$CSTATE/images.tar"; exit 130' INT TERM
  for i in $(seq 1 "$n"); do host_up "h$i" >"$CLOGS/up-h$i.out" 2>&1 & pids+=($!); done
  for i in $(seq 1 "$n"); do
    wait "${pids[$((i - 1))]}" || failed="$failed h$i"
    cat "$CLOGS/up-h$i.out"
  done
  trap - INT TERM
  rm -f "$CSTATE/images.tar"
  [ -z "$failed" ] || die "host(s)$failed did not come up (their lines above; logs in $CLOGS/)"
  step "cluster up: $n hosts; \`scripts/cluster.sh down\` removes everything it made"
}

# --- one swarm across the hosts -----------------------------------------------------------------
swarm_up() {   # every host's engine a Swarm manager (three: a quorum that outlives one host)
  local h first="" token id
  for h in $(hosts_made); do
    if [ "$(hdocker "$h" info --format '{{.Swarm.LocalNodeState}}')" = active ]; then
      first="${first:-$h}"; continue
    fi
    if [ -z "$first" ]; then
      # Management (2377) and gossip (7946) on the host's own address; the routing mesh goes, as on
      # one host (its virtual port would balance over tasks that have not passed their gate).
      hdocker "$h" swarm init --advertise-addr "$(host_ip "$h")" --listen-addr "$(host_ip "$h"):2377" >/dev/null \
        || die "$h: docker swarm init failed"
      hdocker "$h" network rm ingress >/dev/null 2>&1 <<<y || die "could not remove Swarm's routing mesh"
      first="$h"
    else
      token="$(hdocker "$first" swarm join-token -q manager)"
      hdocker "$h" swarm join --token "$token" --advertise-addr "$(host_ip "$h")" \
        --listen-addr "$(host_ip "$h"):2377" "$(host_ip "$first"):2377" >/dev/null || die "$h: docker swarm join failed"
    fi
    id="$(hdocker "$h" info --format '{{.Swarm.NodeID}}')"
    hdocker "$first" node update --label-add "host=$h" "$id" >/dev/null || die "could not label $h's Swarm node"
    info "$h: Swarm manager (node $id, label host=$h)"
  done
  step "one swarm across $(hosts_made | wc -l) hosts; every engine a manager; tasks publish in host mode"
}

# --- faults and their repair ----------------------------------------------------------------------
stop_host() {   # a host goes away at once: network first, then every process on it
  local h="$1"
  ip link set "$(ns "$h")" down 2>/dev/null || true
  for c in gatekeeper registrator proxy-reloader consul; do kill_pid "$c-$h" KILL; done
  # nginx's workers outlive a killed master: the whole process group goes.
  [ -s "$CRUN/nginx-$h.pid" ] && kill -KILL -- "-$(cat "$CRUN/nginx-$h.pid")" 2>/dev/null || true
  rm -f "$CRUN/nginx-$h.pid"
  hdocker "$h" ps -q 2>/dev/null | xargs -r docker -H "unix://$(sock "$h")" kill >/dev/null 2>&1 || true
  kill_pid "dockerd-$h" TERM
  info "$h stopped"
}

start_host() {
  local h="$1"
  host_net_up "$h"
  agent_up "$h"; dockerd_up "$h"; parts_up "$h"
  info "$h back"
}

cut() {    # cut HOST: its agent loses the Consul servers and the other agents (gossip and RPC)
  local h="$1" chain
  for chain in INPUT OUTPUT; do
    in_host "$h" iptables -C "$chain" -p tcp --dport 8300:8302 -j DROP 2>/dev/null && continue
    in_host "$h" iptables -I "$chain" -p tcp --dport 8300:8302 -j DROP
    in_host "$h" iptables -I "$chain" -p udp --dport 8300:8302 -j DROP
    in_host "$h" iptables -I "$chain" -p tcp --sport 8300:8302 -j DROP
    in_host "$h" iptables -I "$chain" -p udp --sport 8300:8302 -j DROP
  done
  info "$h's agent cut off (Consul ports 8300-8302 dropped)"
}

heal() {
  local h="$1" chain p dir
  for chain in INPUT OUTPUT; do for p in tcp udp; do for dir in --dport --sport; do
    while in_host "$h" iptables -D "$chain" -p "$p" "$dir" 8300:8302 -j DROP 2>/dev/null; do :; done
  done; done; done
  info "$h's agent reconnected"
}

# --- tearing down ---------------------------------------------------------------------------------
down() {
  step "Stopping the cluster"
  local h s ids
  # Hosts are stopped side by side: an agent's leave or an engine's shutdown takes seconds, and
  # no host waits for another. Within a host: the stack's parts, then nginx and the containers,
  # then the engine and the agent.
  for h in $(hosts_made); do
    for c in gatekeeper proxy-reloader registrator; do kill_pid "$c-$h" TERM & done
  done
  wait
  for h in $(hosts_made); do
    (
      if [ -s "$CRUN/nginx-$h.pid" ]; then
        kill -QUIT "$(cat "$CRUN/nginx-$h.pid")" 2>/dev/null || true; sleep 0.3
        kill -KILL -- "-$(cat "$CRUN/nginx-$h.pid")" 2>/dev/null || true; rm -f "$CRUN/nginx-$h.pid"
      fi
      if running "dockerd-$h"; then
        ids="$(hdocker "$h" ps -aq 2>/dev/null || true)"
        [ -n "$ids" ] && hdocker "$h" rm -f $ids >/dev/null 2>&1 || true
      fi
      kill_pid "dockerd-$h" TERM
    ) &
    # Nothing is left to tell: a graceful leave would only cost seconds, the servers go next.
    kill_pid "consul-$h" KILL &
  done
  wait
  for h in $(hosts_made); do kill_host_leftovers "$h" & done
  wait
  for h in $(hosts_made); do
    while read -r mnt; do umount -l "$mnt" 2>/dev/null || true; done < <(awk -v d="$DATA/$h" '$2 ~ "^"d {print $2}' /proc/mounts | sort -r)
    while read -r mnt; do umount -l "$mnt" 2>/dev/null || true; done < <(awk -v d="/run/psc-$h" '$2 ~ "^"d {print $2}' /proc/mounts | sort -r)
    ip link del "$(ns "$h")" 2>/dev/null || true
    [ -e "/var/run/netns/$(ns "$h")" ] && ip netns del "$(ns "$h")"
    rm -rf "$DATA/$h" "/run/psc-$h" "$CSTATE/$h"
    info "$h removed"
  done
  for s in "${SERVERS[@]}"; do kill_pid "consul-s$s" KILL & done
  wait
  iptables -D FORWARD -i 'psc-+' -o 'psc-+' -j ACCEPT 2>/dev/null || true
  for s in 1 "${SERVERS[@]}"; do ip addr del "$NET.$s/32" dev lo 2>/dev/null || true; done
  ip route del unreachable "$NET.0/24" 2>/dev/null || true
  rmdir "$DATA" 2>/dev/null || true
  rm -rf "$CSTATE"
  info "network, daemons, data and state removed"
}

status() {
  local h s
  for s in "${SERVERS[@]}"; do
    if running "consul-s$s"; then echo "consul server $NET.$s: running (pid $(cat "$CRUN/consul-s$s.pid"))"; else echo "consul server $NET.$s: not running"; fi
  done
  for h in $(hosts_made); do
    for c in consul dockerd registrator nginx proxy-reloader gatekeeper; do
      if running "$c-$h"; then echo "$h $c: running (pid $(cat "$CRUN/$c-$h.pid"))"; elif [ "$c" != gatekeeper ] || [ "$h" = h1 ] || [ "$h" = h2 ]; then echo "$h $c: not running"; fi
    done
  done
}

case "${1:-}" in
  up) up "${2:-3}" ;; down) down ;; status) status ;;
  stop-host) stop_host "${2:?host}" ;; start-host) start_host "${2:?host}" ;;
  cut) cut "${2:?host}" ;; heal) heal "${2:?host}" ;;
  swarm) swarm_up ;;
  tokens) tokens && info "tokens up to date; each running agent has its own" ;;
  stop-server) kill_pid "consul-s${2:?server number, 11 to 13}" KILL ;; start-server) server_up "${2:?server number, 11 to 13}" ;;
  env) h="${2:?host}"; echo "DOCKER_HOST=unix://$(sock "$h") PROXY=http://$(host_ip "$h"):8000 NETNS=/var/run/netns/$(ns "$h")" ;;
  *) echo "usage: $0 up [HOSTS] | down | status | env HOST | swarm | tokens | stop-host HOST | start-host HOST | cut HOST | heal HOST | stop-server N | start-server N" >&2; exit 2 ;;
esac
