"""The fitted clients a clients= spec draws on (every generator with clients shares the rule)."""

import numpy as np
import pytest

from servegen_ml.core.clients import new_client_sources, source_clients
from servegen_ml.core.errors import UserError
from servegen_ml.core.spec import ClientSpec

FITTED = ["a", "b", "c"]


def test_new_clients_are_a_random_set_of_real_clients():
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(np.sort(new_client_sources(7, 7, rng)), np.arange(7))
    counts = np.bincount(new_client_sources(7, 30, rng), minlength=7)
    assert counts.sum() == 30 and set(counts) == {4, 5}
    assert len(set(new_client_sources(7, 3, rng))) == 3


def test_source_clients_all_list_and_new():
    rng = np.random.default_rng(0)
    codes, names = source_clients(FITTED, ClientSpec.parse("all"), rng)
    assert codes.tolist() == [0, 1, 2] and names == FITTED
    codes, names = source_clients(FITTED, ClientSpec.parse(["c", "a"]), rng)
    assert codes.tolist() == [2, 0] and names == ["c", "a"]
    codes, names = source_clients(FITTED, ClientSpec.parse("new:7"), np.random.default_rng(1))
    assert names == [f"new-{i}" for i in range(7)]
    np.testing.assert_array_equal(codes, new_client_sources(3, 7, np.random.default_rng(1)))


def test_unknown_client_ids_are_named():
    with pytest.raises(UserError, match=r"unknown client ids \['x'\]; this model has 3 clients"):
        source_clients(FITTED, ClientSpec.parse(["a", "x"]), np.random.default_rng(0))
