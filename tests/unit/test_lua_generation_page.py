"""proxystack/generation_page.lua: the table's generation on a page the master maps before it
forks its workers, which every request reads with one load instead of taking a shared dict's
lock. Run under luajit (tests/lua/run_cases.lua), a forked child standing for a worker; on a real
nginx with two workers and a reload: tests/integration/test_push_endpoint.py."""
from tests.support.lua import run_lua


def test_a_generation_written_by_a_forked_worker_is_read_by_the_others(tmp_path):
    answers = run_lua("generation", {"start": 7, "steps": [["write_in_child", 1_700_000_000_123],
                                                           ["write_in_child", 1_700_000_000_124]]}, tmp_path)
    assert answers == [1_700_000_000_123, 1_700_000_000_124]


def test_the_page_only_catches_up_with_the_dict_never_goes_back(tmp_path):
    answers = run_lua("generation", {"start": 10, "steps": [["catch_up", 12], ["catch_up", 11], ["write", 20],
                                                            ["catch_up", 19], ["catch_up", 20]]}, tmp_path)
    assert answers == [12, 12, 20, 20, 20]
