"""XLA's persistent compilation cache, on by default.

Every stage builds its own jitted train and predict steps, so without a
cache the ceiling, each weak-to-strong student and every prediction pass
of one model compile the same programs again (bench/RESULTS.md section 4:
compilation was most of a short run's time). JAX's persistent cache keys
each compiled program by its HLO and the compiler, so an identical program
is loaded instead: within a run (the same model, loss and shapes in
another stage, whatever its length: steps.init_state keeps the length in
the state) and across runs. `W2S_COMPILE_CACHE` names the directory (default
~/.cache/w2s_jax/xla, also for "on", "1" or "true"); "off", "0" or
"false" turns it off.
"""
from __future__ import annotations

import os

import jax

ENV = "W2S_COMPILE_CACHE"
# Values of the variable that mean off, and the default directory (so
# W2S_COMPILE_CACHE=on is not taken for a directory named "on").
OFF = ("off", "0", "false")
ON = ("", "on", "1", "true")
# Programs that compile faster than this are not worth a file.
MIN_COMPILE_SECONDS = 0.5


def enable() -> str | None:
    """Point JAX at the cache directory (idempotent); returns it, or None
    when turned off."""
    value = os.environ.get(ENV, "").strip()
    if value.lower() in OFF:
        return None
    path = value if value.lower() not in ON else os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
        "w2s_jax", "xla")
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      MIN_COMPILE_SECONDS)
    return path
