"""Every program of the stack, given an input that cannot work (a token file that is not
there, a Consul address without a port, a port out of range, an output folder that does not
exist), says what is wrong on one line and exits 2: no traceback, nothing contacted, nothing
written. Each runs in-process, so an exception escaping main() fails the test."""
from __future__ import annotations

import importlib

import pytest

MISSING_TOKEN = "/nonexistent/operator.token"
NO_PORT = "consul.example"

CASES = [
    # (module, argv, what stderr must say)
    ("gatekeeper.__main__", ["status", "--consul-token-file", MISSING_TOKEN], "cannot read the Consul token file"),
    ("gatekeeper.__main__", ["status", "--consul", NO_PORT], "is not HOST:PORT"),
    ("proxy_reloader.__main__", ["cert", "list", "--consul-token-file", MISSING_TOKEN],
     "cannot read the Consul token file"),
    ("proxy_reloader.__main__", ["cert", "list", "--consul", NO_PORT], "is not HOST:PORT"),
    ("proxy_reloader.__main__", ["--once", "--nginx-prefix", "{tmp}/nginx", "--consul-token-file", MISSING_TOKEN],
     "cannot read the Consul token file"),
    ("registrator.__main__", ["--consul-token-file", MISSING_TOKEN], "cannot read the Consul token file"),
    ("registrator.__main__", ["--consul", NO_PORT], "is not HOST:PORT"),
    ("catalog.backup", ["save", "{tmp}/b.backup", "--consul", NO_PORT], "is not HOST:PORT"),
    ("catalog.acl_setup", ["--consul", NO_PORT, "--tokens", "{tmp}/tokens"], "is not HOST:PORT"),
    ("dashboard.__main__", ["--listen", "127.0.0.1:70000"], "is not HOST:PORT"),
    ("dashboard.__main__", ["--consul", NO_PORT], "is not HOST:PORT"),
    ("delivery.__main__", ["deploy", "demo:v1", "--consul-token-file", MISSING_TOKEN],
     "cannot read the Consul token file"),
    ("monitoring.config", ["--targets", "t.json", "--out", "{tmp}/no/such/folder/prometheus.yml"],
     "No such file or directory"),
]


@pytest.mark.parametrize("module, argv, said", CASES, ids=[f"{m.split('.')[0]} {' '.join(a[:2])}" for m, a, _ in CASES])
def test_bad_input_is_one_clear_line_and_exit_2(module, argv, said, tmp_path, capsys, monkeypatch):
    for name in ("CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN_FILE", "CONSUL_HTTP_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code = importlib.import_module(module).main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert said in err and "Traceback" not in err, err
    assert not (tmp_path / "b.backup").exists() and not (tmp_path / "tokens").exists()


@pytest.mark.parametrize("argv, said", [
    (["--log-max-size", "10q"], "--log-max-size: '10q' is not a size"),
    (["--log-max-size", "-1"], "--log-max-size: '-1' is not a size"),
    (["--log-keep", "0"], "--log-keep must be from 1 to 100"),
    (["--log-keep", "101"], "--log-keep must be from 1 to 100"),
    (["--log-keep", "three"], "argument --log-keep: invalid int value"),
    (["--table-size", "1k"], "--table-size 1k: a shared memory zone of 64k to 4g"),
    (["--metrics-size", "lots"], "--metrics-size: 'lots' is not a size"),
])
def test_proxy_reloader_refuses_a_bad_log_rotation_on_one_line_with_exit_2(argv, said, tmp_path, capsys):
    from proxy_reloader.__main__ import main
    with pytest.raises(SystemExit) as done:
        main(["--nginx-prefix", str(tmp_path / "nginx"), *argv])
    err = capsys.readouterr().err
    assert done.value.code == 2 and said in err and "Traceback" not in err, err
    assert not (tmp_path / "nginx").exists(), "nothing written"
