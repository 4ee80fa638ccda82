"""bench.harness.bench_env on the real Consul and Docker Engine the benchmarks use: a run that
finishes leaves no folder behind (it holds every measured proxy's logs, ~550 MB after a
proxy_bench run); one that fails keeps its folder for a look and says where."""
import shutil

import pytest

from bench.harness import bench_env


def test_a_finished_benchmark_leaves_no_folder_behind():
    with bench_env() as env:
        base = env.base
        (base / "proxy" / "logs").mkdir(parents=True)
        (base / "proxy" / "logs" / "access.log").write_text("GET /fast/ 200\n" * 1000)
        assert env.consul.address
    assert not base.exists()


def test_a_failed_benchmark_keeps_its_folder_and_names_it(capsys):
    base = None
    try:
        with pytest.raises(RuntimeError):
            with bench_env() as env:
                base = env.base
                (base / "error.log").write_text("why it failed\n")
                raise RuntimeError("a measure broke")
        assert (base / "error.log").read_text() == "why it failed\n"
        assert f"kept for a look: {base}" in capsys.readouterr().err
    finally:
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)
