"""pebble, an ACME (RFC 8555) test server, with pebble-challtestsrv as its DNS (every name
resolves to 127.0.0.1), for the ACME issuer's tests: offline, on loopback, stopped by pid."""
from __future__ import annotations

import json
from pathlib import Path

import requests

from catalog import local_ca
from testbed.processes import Proc, find_binary, wait_until
from testbed.tls import make_cert


class Pebble:
    def __init__(self, base: Path, http_port: int, port: int = 18014, dns_port: int = 18053):
        """`http_port`: where pebble validates HTTP-01 challenges (on 127.0.0.1)."""
        self.base, self.port, self.dns_port = base, port, dns_port
        base.mkdir(parents=True, exist_ok=True)
        ca, _ = local_ca.ensure(base / "ca")                # pebble's own HTTPS, trusted by the client alone
        chain, key = make_cert(ca, ["localhost", "127.0.0.1"])
        (base / "cert.pem").write_text(chain)
        (base / "key.pem").write_text(key)
        self.ca_bundle = str(base / "ca" / "root.crt")
        config = {"pebble": {"listenAddress": f"127.0.0.1:{port}", "managementListenAddress": f"127.0.0.1:{port + 2}",
                             "certificate": str(base / "cert.pem"), "privateKey": str(base / "key.pem"),
                             "httpPort": http_port, "tlsPort": port + 3, "ocspResponderURL": "",
                             "externalAccountBindingRequired": False}}
        (base / "pebble.json").write_text(json.dumps(config))
        self.directory = f"https://127.0.0.1:{port}/dir"
        self.dns = Proc("pebble-challtestsrv", [
            find_binary("pebble-challtestsrv"), "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
            "-dns01", f"127.0.0.1:{dns_port}", "-http01", "", "-https01", "", "-tlsalpn01", "",
            "-management", f"127.0.0.1:{dns_port + 2}"], base)
        self.proc = Proc("pebble", [find_binary("pebble"), "-config", str(base / "pebble.json"),
                                    "-dnsserver", f"127.0.0.1:{dns_port}"], base,
                         env={"PEBBLE_VA_NOSLEEP": "1"})

    def start(self) -> "Pebble":
        self.dns.start()
        self.proc.start()
        try:
            wait_until(lambda: requests.get(self.directory, verify=self.ca_bundle, timeout=2).status_code == 200, 30,
                       "pebble's ACME directory")
        except BaseException:
            self.stop()
            raise
        return self

    def roots(self) -> str:
        """The PEM of pebble's root, which signs what it issues (a new one each start)."""
        return requests.get(f"https://127.0.0.1:{self.port + 2}/roots/0", verify=self.ca_bundle, timeout=5).text

    def stop(self) -> None:
        self.proc.stop()
        self.dns.stop()
