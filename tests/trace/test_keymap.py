import numpy as np

from servegen_ml.trace.keymap import KeyMap


def test_keymap_matches_a_dict_with_later_updates_winning():
    rng = np.random.default_rng(0)
    table, reference = KeyMap(width=2), {}
    for step in range(30):
        keys = rng.integers(0, 500, size=int(rng.integers(0, 60))).astype(np.uint64)
        values = np.column_stack([np.full(len(keys), step), np.arange(len(keys))])
        table.update(keys, values)
        for k, v in zip(keys.tolist(), values.tolist()):
            reference[k] = v
    probe = np.arange(600, dtype=np.uint64)
    found, values = table.lookup(probe)
    assert found.tolist() == [k in reference for k in range(600)]
    assert [v.tolist() for v, f in zip(values, found) if f] == [
        reference[k] for k in range(600) if k in reference
    ]
    assert len(table._levels) <= 8  # levels are merged as they grow


def test_key_set_does_not_modify_the_callers_array():
    keys = np.array([5, 1, 3], dtype=np.uint64)
    table = KeyMap()
    table.update(keys)
    assert keys.tolist() == [5, 1, 3] and table.contains(np.array([1, 2], dtype=np.uint64)).tolist() == [
        True,
        False,
    ]
