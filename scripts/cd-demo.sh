#!/usr/bin/env bash
# The seed's CD story on one machine: prod is a host of its own (scripts/cluster.sh: a Consul
# cluster and two Docker hosts in network namespaces, h2's dockerd speaking only TLS with client
# certificates). This machine is the CD node: it builds the demo service at this commit, pushes
# it to a registry on the cluster's network, deploys it to prod over TLS and lets the gate admit
# it; then a broken build is refused by its integration tests and prod goes on serving the good
# one. Everything is removed at the end (KEEP=1 leaves it up; `scripts/cluster.sh down` later).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CSTATE="${PROXYSTACK_CLUSTER_STATE:-$ROOT/.cluster}"
export REGISTRY_ADDR="${REGISTRY_ADDR:-10.210.0.1:5000}" REGISTRY_CA="$CSTATE/certs"
REGISTRY="$REGISTRY_ADDR"
PROD="10.210.0.22"
PROXY="http://$PROD:8000"
export CONSUL_HTTP_TOKEN_FILE="$CSTATE/tokens/operator.token"

finish() {
  local code=$?
  if [ "${KEEP:-0}" = 1 ]; then info "KEEP=1: the cluster and the registry stay up"
  else bash "$ROOT/scripts/registry.sh" down; bash "$ROOT/scripts/cluster.sh" down; fi
  exit "$code"
}
trap finish EXIT

step "prod: a host of its own (h2, $PROD) in a Consul cluster; its engine speaks only TLS"
bash "$ROOT/scripts/cluster.sh" up 2 | sed 's/^/    /'
ENGINE=(--engine "tcp://$PROD:2376" --tls-dir "$CSTATE/certs/client")
CONSUL=(--consul https://127.0.0.11:8501)
export CONSUL_CACERT="$CSTATE/tls/ca/ca.pem"     # the cluster's Consul speaks HTTPS only, with a CA of its own
info "prod's engine: tcp://$PROD:2376 (dockerd --tlsverify; the CD node's client certificate: $CSTATE/certs/client/)"
bash "$ROOT/scripts/registry.sh" up

VERSION="$(git -C "$ROOT" rev-parse --short=12 HEAD)"
[ -z "$(git -C "$ROOT" status --porcelain -- demo_service)" ] || VERSION="$VERSION-dirty"

step "CD node: build-and-push demo $VERSION (unit tests run in the build)"
delivery build-and-push "$ROOT/demo_service" --registry "$REGISTRY" --version "$VERSION" \
  --wheelhouse "$STATE/wheelhouse" | sed 's/^/    /'
[ "${PIPESTATUS[0]}" -eq 0 ] || die "build-and-push failed"

step "CD node: deploy $REGISTRY/demo:$VERSION to prod; the gate decides"
delivery deploy "$REGISTRY/demo:$VERSION" "${ENGINE[@]}" "${CONSUL[@]}" --label proxystack.demo=1 --timeout 180 | sed 's/^/    /'
[ "${PIPESTATUS[0]}" -eq 0 ] || die "the deploy of $VERSION failed"
# exit 0 means every proxy serves it already: the first request gets it
body="$(curl -s "$PROXY/demo/1")"
[[ "$body" == *"\"$VERSION\""* ]] || die "deploy exited 0 but the proxy does not serve $VERSION yet: $body"
info "\$ curl $PROXY/demo/1  ->  $body"

step "A broken build of the same code: passes its unit tests, fails the integration tests"
delivery build-and-push "$ROOT/demo_service" --registry "$REGISTRY" --version "$VERSION-broken" \
  --wheelhouse "$STATE/wheelhouse" --build-arg BROKEN=1 | sed 's/^/    /'
if delivery deploy "$REGISTRY/demo:$VERSION-broken" "${ENGINE[@]}" "${CONSUL[@]}" --label proxystack.demo=1 --timeout 180 | sed 's/^/    /'; [ "${PIPESTATUS[0]}" -eq 0 ]; then
  die "the broken build was admitted; the gate is not working"
fi
info "deploy exited non-zero, as a CD job would see it; prod still serves: $(curl -s "$PROXY/demo/1")"
echo
gatekeeper "${CONSUL[@]}" status demo
