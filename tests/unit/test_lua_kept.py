"""proxystack/kept.lua: the list a table is read by (its services' names, its certificates')
is never lost when the zone is full. nginx's shared dicts free a key's old value before they
allocate a new one of another length; a write that then finds no room would lose the list.
Run under luajit over a zone that behaves so (tests/lua/run_cases.lua); on a real nginx:
tests/integration/test_push_endpoint.py's full zone."""
from tests.support.lua import run_lua


def test_a_longer_list_that_finds_no_room_leaves_the_one_before(tmp_path):
    short, longer, longest = '["a"]', '["a","b"]', '["a","b","c","d","e","f","g","h","i","j"]'
    # 40 bytes of room: the list and the one written beside it (for an older build) fit, twice
    # the longest does not
    answers = run_lua("kept", {"room": 40, "values": [short, longer, longest, longer]}, tmp_path)
    assert answers == [[True, short], [True, longer], [False, longer], [True, longer]]

