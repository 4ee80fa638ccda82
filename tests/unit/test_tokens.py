"""Where Consul tokens come from (a file or the environment, never the command line), and what HTTPS to Consul trusts."""
import pytest

from catalog.consul_client import ConsulClient, read_token


def test_token_file_then_token_file_env_then_token_env(tmp_path, monkeypatch):
    f = tmp_path / "t.token"
    f.write_text("from-file\n")
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "from-env")
    assert read_token(str(f)) == "from-file"
    assert read_token() == "from-env"
    monkeypatch.setenv("CONSUL_HTTP_TOKEN_FILE", str(f))
    assert read_token() == "from-file"


def test_an_unreadable_token_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError) as err:
        read_token(str(tmp_path / "missing.token"))
    assert "missing.token" in str(err.value) and "No such file" in str(err.value)


def test_an_explicit_token_beats_the_environment(monkeypatch):
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "operator-token")
    client = ConsulClient("127.0.0.1:1", token="registrator-token")
    assert client._c.token == "registrator-token" and client._blocking.token == "registrator-token"


def test_https_to_consul_trusts_consuls_own_variables_and_says_what_is_wrong_with_them(tmp_path, monkeypatch):
    from catalog.consul_client import Tls
    for name in ("CONSUL_CACERT", "CONSUL_CLIENT_CERT", "CONSUL_CLIENT_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert Tls.from_env() == Tls() and Tls.from_env().verify is True          # the system's CAs
    ca, cert, key = (tmp_path / n for n in ("ca.pem", "cert.pem", "key.pem"))
    for f in (ca, cert, key):
        f.write_text("PEM")
    monkeypatch.setenv("CONSUL_CACERT", str(ca))
    assert Tls.from_env().verify == str(ca) and Tls.from_env().cert is None
    monkeypatch.setenv("CONSUL_CLIENT_CERT", str(cert))
    with pytest.raises(ValueError, match="CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY go together"):
        Tls.from_env()
    monkeypatch.setenv("CONSUL_CLIENT_KEY", str(key))
    assert Tls.from_env().cert == (str(cert), str(key))
    monkeypatch.setenv("CONSUL_CACERT", str(tmp_path / "missing.pem"))
    with pytest.raises(ValueError, match=r"CONSUL_CACERT=.*missing.pem: no such file"):
        Tls.from_env()


def test_a_certificate_the_client_does_not_trust_is_said_so_with_the_variable_to_set():
    import requests
    from catalog.cli import consul_unreachable
    told = consul_unreachable("https://127.0.0.1:8501", requests.exceptions.SSLError("CERTIFICATE_VERIFY_FAILED"))
    assert "does not trust" in told and "CONSUL_CACERT" in told
    assert "is unreachable (ConnectionError)" in consul_unreachable("127.0.0.1:8500", requests.ConnectionError())


def test_plain_http_to_consul_ignores_the_tls_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("CONSUL_CACERT", str(tmp_path / "gone.pem"))        # stale, from another shell
    ConsulClient("127.0.0.1:8500")                                           # no error: HTTP reads none
    with pytest.raises(ValueError, match="CONSUL_CACERT"):
        ConsulClient("https://127.0.0.1:8501")


def test_a_token_file_read_again_puts_a_new_token_in_use_on_every_connection(tmp_path):
    from catalog.consul_client import TokenFile
    f = tmp_path / "registrator.token"
    f.write_text("old\n")
    client = ConsulClient("127.0.0.1:1", token="old")
    tokens = TokenFile(client, str(f))
    assert tokens.refresh() is False, "the same token: nothing changes"
    f.write_text("new\n")
    assert tokens.refresh() is True
    assert client.token == client._c.token == client._blocking.token == "new"
    f.unlink()
    assert tokens.refresh() is False and client.token == "new", "a missing file keeps the token in use"
    assert TokenFile(client, None).refresh() is False
