#!/usr/bin/env bash
# The seed's CD story on one machine, on a running stack (scripts/stack.sh up):
# build-and-push the demo service at this commit into the local registry, deploy it to "prod"'s
# engine over TLS with a client certificate, let the gate admit it; then a broken build is
# refused by its integration tests and prod goes on serving the good one.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REGISTRY="${REGISTRY_ADDR:-127.0.0.1:5000}"
ENGINE_TLS_PORT="${ENGINE_TLS_PORT:-2376}"
CERTS="$STATE/certs"
PROXY="http://${PROXY_LISTEN:-127.0.0.1:8000}"
export CONSUL_HTTP_TOKEN_FILE="$STATE/tokens/operator.token"

bash "$ROOT/scripts/registry.sh" up

step "TLS for prod's engine: a CA, the engine's certificate, the CD node's client certificate"
bash "$ROOT/scripts/certs.sh" ca "$CERTS/ca" | sed 's/^/    /'
bash "$ROOT/scripts/certs.sh" server "$CERTS/ca" "$CERTS/prod" IP:127.0.0.1,DNS:localhost | sed 's/^/    /'
bash "$ROOT/scripts/certs.sh" client "$CERTS/ca" "$CERTS/cd-client" cd | sed 's/^/    /'
# On a real prod machine dockerd itself listens with --tlsverify (ansible role docker_engine).
# Here the running engine keeps its socket only, and a TLS listener that demands a client
# certificate forwards to it on 127.0.0.1:$ENGINE_TLS_PORT.
if ! is_running engine-tls; then
  setsid socat "OPENSSL-LISTEN:$ENGINE_TLS_PORT,bind=127.0.0.1,reuseaddr,fork,cert=$CERTS/prod/cert.pem,key=$CERTS/prod/key.pem,cafile=$CERTS/prod/ca.pem,verify=1" \
    UNIX-CONNECT:/var/run/docker.sock >>"$LOGS/engine-tls.log" 2>&1 </dev/null &
  echo $! >"$RUN/engine-tls.pid"
fi
info "prod's engine: tcp://127.0.0.1:$ENGINE_TLS_PORT (TLS, client certificate required)"
ENGINE=(--engine "tcp://127.0.0.1:$ENGINE_TLS_PORT" --tls-dir "$CERTS/cd-client")

VERSION="$(git -C "$ROOT" rev-parse --short=12 HEAD)"
[ -z "$(git -C "$ROOT" status --porcelain -- demo_service)" ] || VERSION="$VERSION-dirty"

step "CD node: build-and-push demo $VERSION (unit tests run in the build)"
delivery build-and-push "$ROOT/demo_service" --registry "$REGISTRY" --version "$VERSION" \
  --wheelhouse "$STATE/wheelhouse" | sed 's/^/    /'
[ "${PIPESTATUS[0]}" -eq 0 ] || die "build-and-push failed"

step "CD node: deploy $REGISTRY/demo:$VERSION to prod; the gate decides"
delivery deploy "$REGISTRY/demo:$VERSION" "${ENGINE[@]}" --label proxystack.demo=1 --timeout 180 | sed 's/^/    /'
[ "${PIPESTATUS[0]}" -eq 0 ] || die "the deploy of $VERSION failed"
# exit 0 means every proxy serves it already: the first request gets it
body="$(curl -s "$PROXY/demo/1")"
[[ "$body" == *"\"$VERSION\""* ]] || die "deploy exited 0 but the proxy does not serve $VERSION yet: $body"
info "\$ curl $PROXY/demo/1  ->  $body"

step "A broken build of the same code: passes its unit tests, fails the integration tests"
delivery build-and-push "$ROOT/demo_service" --registry "$REGISTRY" --version "$VERSION-broken" \
  --wheelhouse "$STATE/wheelhouse" --build-arg BROKEN=1 | sed 's/^/    /'
if delivery deploy "$REGISTRY/demo:$VERSION-broken" "${ENGINE[@]}" --label proxystack.demo=1 --timeout 180 | sed 's/^/    /'; [ "${PIPESTATUS[0]}" -eq 0 ]; then
  die "the broken build was admitted; the gate is not working"
fi
info "deploy exited non-zero, as a CD job would see it; prod still serves: $(curl -s "$PROXY/demo/1")"
echo
gatekeeper status demo
