import pytest
from docker.utils import parse_repository_tag

from catalog.images import image_name, image_version, split_image

REFS = ["demo", "demo:v2", "team/demo:v2", "registry:5000/demo", "registry:5000/team/demo:v2",
        "demo:v2@sha256:" + "a" * 64, "localhost:5000/demo@sha256:" + "b" * 64]


@pytest.mark.parametrize("ref", REFS)
def test_split_agrees_with_the_docker_sdk(ref):
    repo, tag = parse_repository_tag(ref.split("@", 1)[0])
    assert split_image(ref) == (repo, tag or "")


def test_version_and_name():
    assert image_version("registry:5000/team/demo") == "latest"
    assert image_version("registry:5000/team/demo:v2") == "v2"
    assert image_name("registry:5000/team/demo:v2") == "demo" and image_name("demo") == "demo"
