"""Several weak supervisors of one student: combining their predictions
into one set of labels, and routing each example to one of them.

Jitted like the losses and the label hand-off (train/labels.py), so the
supervisors' predictions are combined where the models ran. Shapes: S
supervisors, N examples, K classes; probabilities in, probabilities out.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

COMBINES = ("mean", "vote")


@functools.partial(jax.jit, static_argnames="how")
def combine(probs: jax.Array, how: str) -> jax.Array:
    """One [N, K] label distribution from S supervisors' [S, N, K].

    "mean": the mean probability (a soft ensemble: confident supervisors
    weigh more). "vote": the one-hot of the class most supervisors' argmax
    picks, each supervisor one vote whatever its confidence; a tie goes to
    the tied class with the highest mean probability, so an even split is
    settled by how sure the supervisors are rather than by class order
    (and only an exact tie of the means falls back to the lower class).
    """
    if how not in COMBINES:
        raise ValueError(f"combine how={how!r} is not valid; choose one of: "
                         f"{', '.join(COMBINES)}")
    mean = probs.mean(axis=0)
    if how == "mean":
        return mean
    num_classes = probs.shape[-1]
    votes = jax.nn.one_hot(jnp.argmax(probs, axis=-1), num_classes).sum(axis=0)
    tied = votes == votes.max(axis=-1, keepdims=True)
    winner = jnp.argmax(jnp.where(tied, mean, -jnp.inf), axis=-1)
    return jax.nn.one_hot(winner, num_classes, dtype=jnp.float32)


@jax.jit
def route(teacher_probs: jax.Array, student_probs: jax.Array
          ) -> tuple[jax.Array, jax.Array]:
    """Co-supervision's teacher assignment (Liu & Alahi 2024): each example
    goes to the teacher the current student agrees with most.

    Agreement is the student's own training loss on each teacher's labels,
    the cross-entropy H(teacher, student) = -sum_c t_c log s_c: the teacher
    whose labels the student would find least surprising is taken as the
    expert for that example (the student, trained on all teachers, has
    learnt where each of them is reliable). Equal losses go to the lower
    teacher index. Returns the routed targets [N, K] (that teacher's
    probabilities) and the teacher index [N].
    """
    # Clipped so a student probability of exactly 0 gives a large, finite
    # loss instead of inf * 0 = nan for a teacher that puts 0 there too.
    log_student = jnp.log(jnp.clip(student_probs, 1e-12, 1.0))
    loss = -jnp.sum(teacher_probs * log_student[None], axis=-1)  # [S, N]
    chosen = jnp.argmin(loss, axis=0)
    routed = jnp.take_along_axis(teacher_probs, chosen[None, :, None],
                                 axis=0)[0]
    return routed, chosen
