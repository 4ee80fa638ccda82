"""The demo image runs its unit tests during `docker build`: a failing unit test fails the build."""
import shutil
import subprocess

import pytest

from testbed.processes import ROOT

STAGE = ROOT / ".stack" / "build" / "demo_service"


def build(context, tag):
    base = (ROOT / ".stack" / "base-image").read_text().strip()
    return subprocess.run(["docker", "build", "--force-rm", "-t", tag, "--build-arg", f"BASE_IMAGE={base}", str(context)],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture
def context(tmp_path, demo_images):
    if not (STAGE / "wheels").is_dir():
        pytest.fail("no staged build context; `bash scripts/install.sh images` makes it")
    dest = tmp_path / "ctx"
    shutil.copytree(STAGE, dest)
    for name in ("demo", "tests"):                  # the working tree's sources, not the staged ones
        shutil.rmtree(dest / name)
        shutil.copytree(ROOT / "demo_service" / name, dest / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_a_failing_unit_test_fails_the_image_build(context, docker_client):
    app = context / "demo" / "app.py"
    app.write_text(app.read_text().replace("REC_FACTOR = 7671", "REC_FACTOR = 7672"))
    res = build(context, "proxystack-should-not-exist:broken")
    assert res.returncode != 0
    assert "test_rec_for_item_1_is_7671" in res.stdout + res.stderr
    with pytest.raises(Exception):
        docker_client.images.get("proxystack-should-not-exist:broken")


def test_the_unchanged_sources_build(context, docker_client):
    res = build(context, "proxystack-build-check:ok")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    docker_client.images.remove("proxystack-build-check:ok")
