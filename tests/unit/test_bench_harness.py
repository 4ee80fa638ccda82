"""What the benchmarks' printed figures mean: percentiles by nearest rank, side-by-side pairs, and
--check's exit code."""
from bench.harness import beside, exit_code, goals_table, percentile


def test_a_percentile_is_a_value_measured_at_its_nearest_rank():
    values = [float(v) for v in range(1, 201)]             # 1..200; the order given does not matter
    assert percentile(reversed(values), 50) == 100.0
    assert percentile(values, 95) == 190.0
    assert percentile(values, 99) == 198.0
    assert percentile([3.0], 99) == 3.0


def test_of_fewer_than_a_hundred_values_the_p99_is_the_slowest():
    assert percentile(range(70), 99) == 69
    assert percentile(range(99), 99) == 98
    assert percentile(range(100), 99) == 98                # the second slowest of 100


def test_check_fails_only_on_a_missed_goal_and_the_table_says_which():
    rows = [("p50 s", 0.5, "<= 1", True), ("cpu", 78, "-", None), ("p99 s", 4.7, "<= 3", False)]
    assert exit_code(rows, check=True) == 1
    assert exit_code(rows, check=False) == 0
    assert exit_code(rows[:2], check=True) == 0
    table = goals_table(rows).splitlines()
    assert table[0].endswith("met") and table[2].endswith("MISSED") and not table[1].rstrip().endswith(("met", "MISSED"))


def test_each_contender_runs_right_beside_the_baseline_and_who_goes_first_swaps_every_round():
    ran = []

    def run(name):
        ran.append(name)
        return f"{name}#{len(ran)}"

    pairs = beside(run, "hand", ("stack", "other"), rounds=3)
    assert ran == ["hand", "stack", "hand", "other",          # round 1: the baseline first
                   "stack", "hand", "other", "hand",          # round 2: the contender first
                   "hand", "other", "hand", "stack"]          # round 3: the contenders' order turned
    # each contender's result with the baseline's run of its own pair, not any other
    assert pairs["stack"] == [("stack#2", "hand#1"), ("stack#5", "hand#6"), ("stack#12", "hand#11")]
    assert pairs["other"] == [("other#4", "hand#3"), ("other#7", "hand#8"), ("other#10", "hand#9")]


def test_no_contender_always_runs_in_the_same_place_of_a_round():
    """A place in the round (first after a pause, last after the others) must not weigh on one
    contender only: over 2 x N rounds each of N contenders takes each place, baseline first and after."""
    ran = []
    contenders = ("stack", "few", "many")
    beside(lambda name: ran.append(name), "hand", contenders, rounds=6)
    seen = {name: set() for name in contenders}
    for r in range(6):
        round_ = [n for n in ran[r * 6:(r + 1) * 6] if n != "hand"]
        for place, name in enumerate(round_):
            seen[name].add((place, ran[r * 6 + 2 * place] == "hand"))
    assert all(places == {(p, first) for p in range(3) for first in (True, False)} for places in seen.values()), seen


def test_the_cost_benchmark_takes_away_what_each_step_names_from_the_config_the_stack_renders():
    """bench.proxy_cost_bench's steps edit proxy-reloader's rendered nginx.conf
    (bench/stack_variants.py); a template that moved on must stop them (not let them measure a
    step that changed nothing)."""
    from bench import proxy_cost_bench as cost
    from bench import stack_variants
    from proxy_reloader.render import DYNAMIC, Settings, render

    conf = render([], "/p", "127.0.0.1:1", settings=Settings("/p", "127.0.0.1:1", workers="1", mode=DYNAMIC))

    def location(text):
        start = text.index("        location / {\n            set")
        return text[start:text.index("\n        }\n", start)]

    stack = location(conf)
    assert "router.request" in stack and "metrics.log" in stack and "proxystack_backend" in stack
    no_lua = conf
    for step in cost.STEPS["no Lua code"]:
        no_lua = step(no_lua, 9)
    assert "router.request" not in location(no_lua) and "metrics.log" not in location(no_lua)
    assert 'set_current_peer("127.0.0.1", 9)' in no_lua and "router.balance()" not in no_lua
    static = stack_variants.static_upstream(no_lua, 9)
    assert "proxy_pass http://static_backend;" in location(static)
    assert "server 127.0.0.1:9; keepalive 64;" in static
    try:
        stack_variants.static_upstream(static, 9)    # applied twice: its pattern is gone
    except RuntimeError as e:
        assert "needs updating" in str(e)
    else:
        raise AssertionError("a step whose pattern is not in the config went through")


def test_the_lua_floor_is_the_hand_written_proxy_entering_lua_three_times_and_nginx_takes_it(tmp_path):
    """The Lua floor of proxy_bench, tls_bench and proxy_cost_bench: each hand-written config with
    nginx's Lua module entered where the stack enters it (route, peer, log phase), and nothing
    else changed; real nginx accepts both."""
    import subprocess
    from bench import proxy_bench, tls_bench
    from bench.stack_variants import empty_lua_entries
    from catalog import local_ca
    from proxy_reloader.nginx import find_nginx, modules_path
    from testbed.tls import make_cert

    nginx = find_nginx()
    ca, _ = local_ca.ensure(tmp_path / "ca")
    chain, key = make_cert(ca, ["bench.test"])
    (tmp_path / "c.pem").write_text(chain)
    (tmp_path / "k.pem").write_text(key)
    for name, template, extra in (("http", proxy_bench.HAND_CONF, {}),
                                  ("tls", tls_bench.HAND_CONF, {"cert": tmp_path / "c.pem", "key": tmp_path / "k.pem"})):
        prefix = tmp_path / name
        (prefix / "logs").mkdir(parents=True)
        (prefix / "tmp").mkdir()
        hand = template.format(prefix=prefix, port=9, listen=1, headers=proxy_bench.SAME_HEADERS, **extra)
        floor = empty_lua_entries(hand, 9, modules_path(nginx))
        added = [line.strip() for line in floor.splitlines() if line not in hand.splitlines()]
        assert [a for a in added if "_by_lua" in a] == [
            "init_by_lua_block { proxystack_peer = require 'ngx.balancer' }",
            "upstream fast { server 0.0.0.1; balancer_by_lua_block "
            "{ proxystack_peer.set_current_peer('127.0.0.1', 9) } keepalive 64; }",
            "set_by_lua $proxystack_route 'return \"fast\"';",
            "log_by_lua_block { }"], name
        (prefix / "nginx.conf").write_text(floor)
        checked = subprocess.run([nginx, "-t", "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
                                 capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, checked.stderr
