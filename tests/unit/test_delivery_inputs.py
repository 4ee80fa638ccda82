"""delivery's input checks: what a CD job gets back for a bad address, image or registry,
before anything touches an engine."""
import json

import pytest

from delivery.__main__ import main
from delivery.build import check_registry
from delivery.deploy import Deployment
from delivery.engine import BadEngineSettings, connect
from catalog.validation import InvalidValue


@pytest.mark.parametrize("url", ["tcp://10.0.0.5:2375", "tcp://prod:2376", "https://prod:2376"])
def test_a_tcp_engine_without_certificates_is_refused_before_connecting(url, monkeypatch):
    monkeypatch.delenv("DOCKER_CERT_PATH", raising=False)
    with pytest.raises(BadEngineSettings, match="refusing an engine on TCP without TLS"):
        connect(url)


def test_a_certificate_folder_missing_files_names_them(tmp_path):
    (tmp_path / "ca.pem").write_text("x")
    with pytest.raises(BadEngineSettings) as err:
        connect("tcp://127.0.0.1:2376", str(tmp_path))
    assert "cert.pem" in str(err.value) and "key.pem" in str(err.value) and "ca.pem" not in str(err.value).split("missing:")[1]


def test_unknown_engine_schemes_are_refused():
    with pytest.raises(BadEngineSettings, match="unsupported engine address"):
        connect("http://prod:2375")


def test_the_test_image_and_version_follow_the_service_image():
    d = Deployment.of("demo", "127.0.0.1:5000/demo:3f2a9c1d0e4b")
    assert (d.version, d.tests_image, d.name) == ("3f2a9c1d0e4b", "127.0.0.1:5000/demo-test:3f2a9c1d0e4b",
                                                   "demo-3f2a9c1d0e4b")
    labels = Deployment.of("demo", "reg:5000/demo:v9", labels={"team": "recs"}).container_labels()
    assert labels == {"team": "recs", "SERVICE_NAME": "demo", "gatekeeper.tests": "reg:5000/demo-test:v9",
                      "gatekeeper.version": "v9"}


def test_the_gate_labels_cannot_be_overridden_by_extra_labels():
    d = Deployment.of("demo", "reg/demo:v1", labels={"SERVICE_NAME": "other", "gatekeeper.tests": "evil:latest"})
    assert d.container_labels()["SERVICE_NAME"] == "demo"
    assert d.container_labels()["gatekeeper.tests"] == "reg/demo-test:v1"


@pytest.mark.parametrize("kw", [{"service": "Demo_Service"}, {"image": "reg/demo:v1;rm -rf"}, {"version": "../x"}])
def test_bad_names_are_refused(kw):
    args = {"service": "demo", "image": "reg/demo:v1", **kw}
    with pytest.raises(InvalidValue):
        Deployment.of(args.pop("service"), args.pop("image"), **args)


@pytest.mark.parametrize("registry", ["http://127.0.0.1:5000", "127.0.0.1:5000/", "", "reg istry:5000"])
def test_a_registry_with_a_scheme_or_junk_is_refused(registry):
    with pytest.raises(ValueError, match="HOST\\[:PORT\\]"):
        check_registry(registry)


def test_cli_bad_input_exits_2_with_json(capsys, tmp_path):
    code = main(["build-and-push", str(tmp_path / "nowhere"), "--registry", "127.0.0.1:5000", "--json"])
    out = capsys.readouterr()
    assert code == 2 and "is not a folder" in out.err
    assert json.loads(out.out) == {"ok": False, "exit": 2, "error": f"{tmp_path / 'nowhere'} is not a folder"}


def test_cli_help_lists_both_commands_and_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    text = capsys.readouterr().out
    assert done.value.code == 0 and "build-and-push" in text and "deploy" in text and "4 deploy timed out" in text


def test_the_default_version_is_the_commit_and_says_when_the_source_has_local_changes(tmp_path):
    import subprocess

    from delivery.build import git_version

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                       check=True, capture_output=True)
    (tmp_path / "svc").mkdir()
    (tmp_path / "svc" / "Dockerfile").write_text("FROM scratch\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "one")
    sha = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert git_version(tmp_path / "svc") == sha[:12]
    (tmp_path / "svc" / "Dockerfile").write_text("FROM scratch\nLABEL x=1\n")
    assert git_version(tmp_path / "svc") == sha[:12] + "-dirty"
    with pytest.raises(ValueError, match="give --version"):
        git_version(tmp_path.parent / "not-a-repo-anywhere")


def test_every_error_carries_its_exit_code():
    from catalog.errors import StackError
    from catalog.validation import InvalidValue
    from delivery.build import BuildFailed
    from delivery.deploy import DeployError, NameTaken
    from delivery.engine import BadEngineSettings, EngineError
    from gatekeeper.promotion.promoter import Conflict, PromotionError
    from gatekeeper.report.status import UnknownTarget
    codes = {InvalidValue("f", 1, "r"): 2, BadEngineSettings("x"): 2, NameTaken("x"): 2, BuildFailed("x"): 1,
             PromotionError("x"): 1, Conflict("x"): 1, UnknownTarget("x"): 1, EngineError("x"): 3,
             DeployError("x"): 3}
    for exc, code in codes.items():
        assert isinstance(exc, StackError) and exc.exit_code == code, type(exc).__name__
    assert isinstance(InvalidValue("f", 1, "r"), ValueError), "callers that catch ValueError still do"


def test_without_git_and_without_version_the_cli_says_to_give_one(capsys, tmp_path, monkeypatch):
    (tmp_path / "svc").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))            # no git anywhere
    code = main(["build-and-push", str(tmp_path / "svc"), "--registry", "127.0.0.1:5000"])
    assert code == 2 and "cannot run git to name the version" in capsys.readouterr().err


def test_a_source_folder_that_cannot_be_copied_is_named_with_the_reason(tmp_path):
    import shutil

    from delivery.__main__ import copy_errors
    from delivery.build import stage
    (tmp_path / "svc").mkdir()
    for name in ("Dockerfile", "Dockerfile.test"):
        (tmp_path / "svc" / name).write_text("FROM scratch\n")
    (tmp_path / "svc" / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "out").mkdir()
    with pytest.raises(shutil.Error) as refused:
        stage(tmp_path / "svc", None, tmp_path / "out")
    said = copy_errors(refused.value)
    assert said.startswith(f"{tmp_path / 'svc' / 'dangling'}: ") and "No such file" in said


def test_an_engine_refusal_is_exit_3_not_a_failed_test(capsys, tmp_path, monkeypatch):
    """docker's APIError is an OSError too (through requests): it must still read as 'the engine
    refused' (3), never as 'the tests failed' (1), which a CD job acts on differently."""
    import docker.errors

    import delivery.__main__ as cli

    def refusing(*_):
        raise docker.errors.APIError("409 Client Error: Conflict", explanation="the name is in use")
    monkeypatch.setattr(cli, "connect", refusing)
    (tmp_path / "svc").mkdir()
    code = main(["build-and-push", str(tmp_path / "svc"), "--registry", "127.0.0.1:5000", "--version", "v1"])
    assert code == 3 and "APIError" in capsys.readouterr().err
