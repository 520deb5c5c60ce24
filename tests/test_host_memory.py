"""Host memory kept for reuse (w2s_jax/core/host_memory.py): XLA:CPU's big
buffers are faulted in once, not at every step; and when it applies."""
import json
import os
import subprocess
import sys

import pytest

from w2s_jax.core import host_memory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Page faults of a jitted computation whose 64 MiB output is allocated and
# freed at every call: above glibc's largest mmap threshold (32 MiB), so by
# default each call maps fresh pages and faults all 16384 of them in.
STEPS = """
import json, resource, sys
from w2s_jax.core import host_memory
kept = host_memory.apply_default()
import jax, jax.numpy as jnp
double = jax.jit(lambda x: x * 2.0)
x = jnp.ones((4096, 4096), jnp.float32)
faults = []
for _ in range(40):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    y = double(x)
    y.block_until_ready()
    del y
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"kept": kept, "faults": faults}))
"""


def _faults(keep: str) -> dict:
    env = dict(os.environ, W2S_KEEP_HOST_MEMORY=keep, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, "-c", STEPS], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not host_memory._glibc(), reason="glibc only")
def test_freed_buffers_are_reused_not_faulted_in_again():
    off, on = _faults("0"), _faults("1")
    assert not off["kept"] and on["kept"]
    pages = 64 * 2 ** 20 // 4096
    # At steady state (JAX frees an output some calls later, so the heap
    # first grows by up to a dozen outputs): every call faults the whole
    # output in without the setting, and (nearly) every call nothing with it.
    assert min(off["faults"][-10:]) > pages // 2, off
    assert sorted(on["faults"][-10:])[7] < pages // 50, on


def test_applies_only_when_asked(monkeypatch):
    calls = []
    monkeypatch.setattr(host_memory, "keep_freed_memory",
                        lambda: calls.append(1) or True)
    for unset_or_not_one in (None, "", "0", "yes", "true"):
        if unset_or_not_one is None:
            monkeypatch.delenv(host_memory.ENV, raising=False)
        else:
            monkeypatch.setenv(host_memory.ENV, unset_or_not_one)
        assert not host_memory.apply_default()
    assert not calls
    monkeypatch.setenv(host_memory.ENV, "1")
    assert host_memory.apply_default() and calls == [1]


# A heap that keeps freed memory (the setting) holds a freed 256 MiB block
# until give_back_free_memory returns its pages.
GIVE_BACK = """
import ctypes, json
from w2s_jax.core import host_memory
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
assert host_memory.keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 256 * 2 ** 20
block = libc.malloc(size)
ctypes.memset(block, 1, size)
libc.malloc(2 ** 20)  # above the block: it is not the heap's top
held = rss()
libc.free(block)
freed = rss()
host_memory.give_back_free_memory()
print(json.dumps({"held": held, "freed": freed, "given_back": rss()}))
"""


@pytest.mark.skipif(not host_memory._glibc(), reason="glibc only")
def test_free_memory_is_given_back_on_request():
    proc = subprocess.run([sys.executable, "-c", GIVE_BACK], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rss = json.loads(proc.stdout.strip().splitlines()[-1])
    assert rss["freed"] > rss["held"] - 16, rss  # free alone keeps the pages
    assert rss["given_back"] < rss["held"] - 200, rss
