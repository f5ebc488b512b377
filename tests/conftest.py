"""Test-wide setup.

Four simulated CPU devices are requested before JAX starts so that sharding tests run on a
`data` mesh of 4; every other test places arrays on device 0 as usual.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
