"""The client population: one point per client, readable parameters."""

import json

import numpy as np

from servegen_ml.neural.population import ClientPopulation, fit_population, nearest_clients


def test_draws_follow_client_count_not_traffic():
    # 3 heavy clients and 30 light ones: a random new client is light 10 times in 11, as a random real one.
    rng = np.random.default_rng(0)
    heavy = rng.normal([5.0, 0.0], 0.1, (3, 2))
    light = rng.normal([-5.0, 0.0], 0.1, (30, 2))
    pop = fit_population(np.concatenate([heavy, light]), n_components=2, seed=0)
    draws = pop.sample(4000, np.random.default_rng(1))
    share_heavy = np.mean(draws[:, 0] > 0)
    assert abs(share_heavy - 3 / 33) < 0.02
    assert abs(draws[draws[:, 0] > 0, 0].mean() - heavy[:, 0].mean()) < 0.1
    assert abs(draws[draws[:, 0] < 0, 0].mean() - light[:, 0].mean()) < 0.1


def test_json_round_trip_and_determinism():
    pop = fit_population(np.random.default_rng(2).normal(size=(5, 3)), n_components=4, seed=0)
    again = ClientPopulation.from_json(json.loads(json.dumps(pop.to_json())))
    np.testing.assert_array_equal(
        again.sample(10, np.random.default_rng(3)), pop.sample(10, np.random.default_rng(3))
    )
    assert pop.mean().shape == (3,)


def test_single_client_population():
    pop = fit_population(np.array([[1.0, 2.0]]), n_components=4, seed=0)
    draws = pop.sample(100, np.random.default_rng(0))
    assert np.allclose(draws.mean(0), [1.0, 2.0], atol=0.05)


def test_nearest_clients_in_units_of_the_spread():
    # Dimension 1 spreads 100x more than dimension 0: distances count each in its own spread.
    real = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 100.0]])
    drawn = np.array([[0.9, 10.0], [0.1, 60.0], [0.4, -5.0]])
    np.testing.assert_array_equal(nearest_clients(real, drawn, block=2), [1, 2, 0])
