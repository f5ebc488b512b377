"""Test-wide setup.

Four simulated CPU devices are requested before JAX starts so that sharding tests run on a
`data` mesh of 4; every other test places arrays on device 0 as usual.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def skip_xla_optimizations():
    """For modules of tiny models, which compile far longer than they run: XLA's optimisation
    passes are skipped, as the Flax ImageNet example's test does. The setting is part of JAX's
    compilation cache key and is restored afterwards."""
    import jax

    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)
