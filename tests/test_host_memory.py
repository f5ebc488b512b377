"""itm_jax.host_memory: a large block freed by a worker thread is reused, not re-faulted."""

import platform
import subprocess
import sys

import pytest

# A worker thread (as XLA's) allocates, fills and frees a 192 MiB block three times; the page
# faults of the last two rounds are printed. Without the settings each round maps fresh pages.
_PROBE = """
import concurrent.futures, ctypes, resource, sys
from itm_jax import host_memory
applied = host_memory.reuse_freed_memory() if sys.argv[1] == "reuse" else None
pool = concurrent.futures.ThreadPoolExecutor(1)  # started after the settings, as JAX's pools

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def fill():  # plain malloc: numpy would madvise huge pages for its large arrays itself
    block = libc.malloc(192 << 20)
    ctypes.memset(block, 1, 192 << 20)
    libc.free(block)

pool.submit(fill).result()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(2):
    pool.submit(fill).result()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], check=True, capture_output=True,
                         text=True).stdout.split()
    return out[0], int(out[1])


def test_a_freed_block_is_reused_without_page_faults():
    applied, reused = _faults("reuse")
    if platform.libc_ver()[0] != "glibc":  # the documented contract there: nothing is changed
        assert applied == "False"
        return
    _, fresh = _faults("default")
    assert applied == "True"
    # 2 x 192 MiB is 98k pages of 4 KiB (fewer with transparent huge pages): the default
    # settings fault them in again; the reuse settings touch no new page.
    assert fresh > 10 * max(reused, 10), (fresh, reused)
    assert reused < 1000, reused


def test_off_glibc_nothing_is_set(monkeypatch):
    from itm_jax import host_memory

    monkeypatch.setattr(platform, "libc_ver", lambda: ("musl", "1.2"))
    monkeypatch.setattr(host_memory.ctypes, "CDLL", lambda _: pytest.fail("libc was loaded"))
    assert host_memory.reuse_freed_memory() is False
