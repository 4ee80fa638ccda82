"""Where Consul tokens come from: a file or the environment, never the command line."""
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
