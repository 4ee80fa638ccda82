#!/usr/bin/env bash
# TLS material for Docker Engines reached over TCP (port 2376), in docker's own layout, and for
# Consul agents with TLS on.
#   scripts/certs.sh ca DIR                      DIR/ca.pem, DIR/ca-key.pem (kept if present)
#   scripts/certs.sh server DIR OUT SAN[,SAN]    OUT/{ca,cert,key}.pem for dockerd --tlsverify
#                                                (SAN: IP:10.100.200.100,DNS:prod)
#   scripts/certs.sh peer DIR OUT SAN[,SAN]      OUT/{ca,cert,key}.pem for a Consul agent (TLS on RPC and
#                                                HTTPS: server and client of the others)
#   scripts/certs.sh client DIR OUT NAME         OUT/{ca,cert,key}.pem for DOCKER_CERT_PATH
# Keys are P-256, private files 0600. Existing files are never overwritten.
set -euo pipefail
die() { printf 'error: %s\n' "$*" >&2; exit 2; }
DAYS="${CERT_DAYS:-825}"

ca() {
  local dir="$1"; mkdir -p "$dir"; chmod 700 "$dir"
  [ -s "$dir/ca.pem" ] && { echo "CA: $dir/ca.pem (kept)"; return 0; }
  (umask 077; openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$DAYS" \
     -keyout "$dir/ca-key.pem" -out "$dir/ca.pem" -subj "/CN=proxystack engine CA" \
     -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null)
  chmod 644 "$dir/ca.pem"
  echo "CA: $dir/ca.pem (new)"
}

issue() {   # issue DIR OUT CN EXTENSIONS
  local dir="$1" out="$2" cn="$3" ext="$4"
  [ -s "$dir/ca.pem" ] && [ -s "$dir/ca-key.pem" ] || die "no CA in $dir; run: $0 ca $dir"
  mkdir -p "$out"
  [ -s "$out/cert.pem" ] && { echo "$cn: $out/cert.pem (kept)"; return 0; }
  (umask 077
   openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$out/key.pem" \
     -out "$out/req.csr" -subj "/CN=$cn" 2>/dev/null
   printf '%b' "$ext" >"$out/ext.cnf"
   openssl x509 -req -in "$out/req.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" -CAcreateserial \
     -CAserial "$dir/ca.srl" -days "$DAYS" -out "$out/cert.pem" -extfile "$out/ext.cnf" 2>/dev/null)
  rm -f "$out/req.csr" "$out/ext.cnf"
  cp "$dir/ca.pem" "$out/ca.pem"; chmod 644 "$out/ca.pem" "$out/cert.pem"
  echo "$cn: $out/cert.pem (new)"
}

case "${1:-}" in
  ca) [ $# -eq 2 ] || die "usage: $0 ca DIR"; ca "$2" ;;
  server) [ $# -eq 4 ] || die "usage: $0 server DIR OUT SAN[,SAN...] (for example IP:127.0.0.1,DNS:localhost)"
          first="${4%%,*}"; issue "$2" "$3" "${first#*:}" "subjectAltName=$4\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\n" ;;
  peer) [ $# -eq 4 ] || die "usage: $0 peer DIR OUT SAN[,SAN...] (a Consul agent: server and client of the others)"
          first="${4%%,*}"; issue "$2" "$3" "${first#*:}" "subjectAltName=$4\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature\n" ;;
  client) [ $# -eq 4 ] || die "usage: $0 client DIR OUT NAME"
          issue "$2" "$3" "$4" "extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature\n" ;;
  *) die "usage: $0 ca DIR | server DIR OUT SANS | peer DIR OUT SANS | client DIR OUT NAME" ;;
esac
