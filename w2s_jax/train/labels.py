"""Labels one model hands the next: soft probabilities or hardened one-hots.

Jitted like the losses, so a chain's label hand-off runs where the model
ran.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

LABEL_KINDS = ("soft", "hard")


@jax.jit
def harden(probs: jax.Array) -> jax.Array:
    """One-hot argmax of each row (ties to the lower class, as np.argmax)."""
    return jax.nn.one_hot(jnp.argmax(probs, axis=-1), probs.shape[-1],
                          dtype=jnp.float32)


def hand_off(probs: np.ndarray, kind: str) -> np.ndarray:
    """The targets a student trains on, from its supervisor's predictions."""
    if kind not in LABEL_KINDS:
        raise ValueError(f"label kind {kind!r} is not valid; choose one of: "
                         f"{', '.join(LABEL_KINDS)}")
    if kind == "soft":
        return np.asarray(probs, np.float32)
    return np.asarray(harden(jnp.asarray(probs)))
