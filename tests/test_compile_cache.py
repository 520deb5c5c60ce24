"""W2S_COMPILE_CACHE: a directory, the default one, or off."""
import os

import jax
import pytest

from w2s_jax.core import compile_cache


@pytest.mark.parametrize("value,expected", [
    (None, "default"), ("on", "default"), ("TRUE", "default"), ("1", "default"),
    ("off", None), ("Off", None), (" off ", None), ("0", None),
    ("/data/xla", "/data/xla")])
def test_cache_directory_from_the_variable(monkeypatch, tmp_path, value,
                                           expected):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    if value is None:
        monkeypatch.delenv(compile_cache.ENV, raising=False)
    else:
        monkeypatch.setenv(compile_cache.ENV, value)
    before = (jax.config.jax_compilation_cache_dir,
              jax.config.jax_persistent_cache_min_compile_time_secs)
    try:
        path = compile_cache.enable()
        configured = jax.config.jax_compilation_cache_dir
    finally:
        jax.config.update("jax_compilation_cache_dir", before[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs",
                          before[1])
    if expected == "default":
        expected = os.path.join(str(tmp_path), "w2s_jax", "xla")
    assert path == expected
    assert configured == (before[0] if expected is None else expected)
