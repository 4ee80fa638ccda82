from catalog.watch import IndexTracker


def test_same_index_is_no_change_and_a_new_one_is():
    t = IndexTracker()
    assert t.advance(10) is True and t.index == 10
    assert t.advance(10) is False
    assert t.advance(11) is True and t.index == 11


def test_index_going_backwards_resets_to_zero():
    t = IndexTracker()
    t.advance(100)
    assert t.advance(5) is True and t.index == 0


def test_zero_is_never_used_as_a_wait_index():
    t = IndexTracker()
    assert t.advance(0) is True and t.index == 1
