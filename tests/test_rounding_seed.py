"""A site's stochastic rounding: OS entropy unless seeded, and then one stream per site."""

from pathlib import Path

import numpy as np

from client.agent import rounding_generator
from client.site import AgentConfig


def _config(name: str, seed: int | None) -> AgentConfig:
    return AgentConfig("127.0.0.1:1", name, Path("/nonexistent"), rounding_seed=seed)


def test_an_unseeded_site_draws_fresh_entropy_each_time():
    first = rounding_generator(_config("hospital-a", None)).random(8)
    second = rounding_generator(_config("hospital-a", None)).random(8)
    assert not np.array_equal(first, second)


def test_a_seeded_site_repeats_and_sites_do_not_share_a_stream():
    a1 = rounding_generator(_config("hospital-a", 7)).random(8)
    a2 = rounding_generator(_config("hospital-a", 7)).random(8)
    b = rounding_generator(_config("hospital-b", 7)).random(8)
    other_seed = rounding_generator(_config("hospital-a", 8)).random(8)
    assert np.array_equal(a1, a2)
    assert not np.array_equal(a1, b)
    assert not np.array_equal(a1, other_seed)
