"""Losses against hand-computed values (w2s_facts.md section 3)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2s_jax.train import losses

LN3 = math.log(3.0)
LN2 = math.log(2.0)
PAPER_PARAMS = {"alpha_max": 0.5, "warmup_frac": 0.2, "schedule": "linear"}


def _value(name, logits, targets, progress=0.0, params=None):
    return float(losses.loss_value(
        losses.get_loss(name), logits=jnp.asarray(logits, jnp.float32),
        targets=jnp.asarray(targets, jnp.float32), progress=progress,
        params=PAPER_PARAMS if params is None else params))


def _random_batch(seed, batch=32, num_classes=2):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(batch, num_classes)).astype(np.float32)
    targets = rng.dirichlet(np.ones(num_classes), size=batch).astype(np.float32)
    return jnp.asarray(logits), jnp.asarray(targets)


# ---- xent -----------------------------------------------------------------

def test_xent_soft_labels_by_hand():
    # Row 0: p = [1/4, 3/4], y = [1/2, 1/2] -> 0.5 ln 4 + 0.5 ln(4/3).
    # Row 1: p = [1/2, 1/2], y = [1, 0]     -> ln 2.
    row0 = 0.5 * math.log(4.0) + 0.5 * math.log(4.0 / 3.0)
    expected = (row0 + LN2) / 2
    got = _value("xent", [[0.0, LN3], [0.0, 0.0]], [[0.5, 0.5], [1.0, 0.0]])
    assert got == pytest.approx(expected, rel=1e-6)
    assert row0 == pytest.approx(0.836988, abs=1e-6)


def test_losses_compute_in_float32_from_bfloat16_logits():
    logits, targets = _random_batch(0)
    for name in losses.LOSSES:
        value = losses.loss_value(losses.get_loss(name),
                                  logits=logits.astype(jnp.bfloat16),
                                  targets=targets, progress=0.5,
                                  params=PAPER_PARAMS)
        assert value.dtype == jnp.float32, name


# ---- hardening ------------------------------------------------------------

# p_0 per row; ascending order of p_0 is rows 1, 5, 3, 7, 2, 6, 4, 0.
P0 = np.array([0.9, 0.1, 0.6, 0.3, 0.8, 0.2, 0.7, 0.4], np.float32)


@pytest.mark.parametrize("prior1, class1_rows", [
    (0.0, []),
    (0.25, [1, 5]),
    (0.5, [1, 5, 3, 7]),
    (0.75, [1, 5, 3, 7, 2, 6]),
    (1.0, list(range(8))),
])
def test_harden_balanced_binary_counts(prior1, class1_rows):
    probs = jnp.stack([P0, 1 - P0], axis=1)
    hard = np.asarray(losses.harden_balanced(probs, jnp.array([1 - prior1, prior1])))
    expected = np.zeros(8, int)
    expected[class1_rows] = 1
    np.testing.assert_array_equal(hard[:, 1], expected)
    np.testing.assert_array_equal(hard.sum(axis=1), np.ones(8))


@pytest.mark.parametrize("prior1, n_class1", [(0.3, 2), (0.3125, 3), (0.5, 4)])
def test_harden_balanced_rounds_half_up(prior1, n_class1):
    # r * B = 2.4 -> 2, 2.5 -> 3, 4 -> 4.
    probs = jnp.stack([P0, 1 - P0], axis=1)
    hard = losses.harden_balanced(probs, jnp.array([1 - prior1, prior1]))
    assert int(hard[:, 1].sum()) == n_class1


@pytest.mark.parametrize("prior1, class1_rows", [
    (0.25, [0, 1]), (0.5, [0, 1, 2, 3]), (0.75, [0, 1, 2, 3, 4, 5])])
def test_logconf_ties_break_by_batch_index(prior1, class1_rows):
    # A zero-initialised head: every p is [1/2, 1/2]. Lower indices are
    # hardened to class 1 first, so the count is still exact.
    targets = np.zeros((8, 2), np.float32)
    targets[:, 1] = prior1
    targets[:, 0] = 1 - prior1
    stats = losses.get_loss("logconf").batch_targets(
        logits=jnp.zeros((8, 2)), targets=jnp.asarray(targets), progress=0.0,
        params=PAPER_PARAMS)
    expected = np.zeros(8, int)
    expected[class1_rows] = 1
    np.testing.assert_array_equal(np.asarray(stats["hardened"])[:, 1], expected)


def test_harden_balanced_multiclass_prior_correction():
    # Batch mean of p = [0.5, 0.2375, 0.2625]; with a uniform prior the
    # argmax is of p / mean:
    #   row 0: [1.00, 1.26, 0.76] -> 1   row 1: [1.20, 0.84, 0.76] -> 0
    #   row 2: [0.80, 1.47, 0.95] -> 1   row 3: [1.00, 0.42, 1.52] -> 2
    # (the plain argmax would put every row in class 0).
    probs = jnp.array([[0.5, 0.3, 0.2], [0.6, 0.2, 0.2],
                       [0.4, 0.35, 0.25], [0.5, 0.1, 0.4]])
    hard = np.asarray(losses.harden_balanced(probs, jnp.full(3, 1 / 3)))
    np.testing.assert_array_equal(hard, np.eye(3)[[1, 0, 1, 2]])
    # Prior [0.2, 0.4, 0.4] multiplies those ratios; row 1 becomes
    # [0.24, 0.34, 0.30] -> 1, the other rows keep their class.
    hard = np.asarray(losses.harden_balanced(probs, jnp.array([0.2, 0.4, 0.4])))
    np.testing.assert_array_equal(hard, np.eye(3)[[1, 1, 1, 2]])


# ---- alpha schedule -------------------------------------------------------

@pytest.mark.parametrize("schedule, warmup, progress, expected", [
    ("linear", 0.2, 0.0, 0.0),
    ("linear", 0.2, 0.1, 0.25),
    ("linear", 0.2, 0.2, 0.5),
    ("linear", 0.2, 0.6, 0.5),
    ("linear", 0.2, 1.0, 0.5),
    ("linear", 0.0, 0.0, 0.5),
    ("linear", 0.0, 0.7, 0.5),
    ("release_jump", 0.1, 0.0, 0.0),
    ("release_jump", 0.1, 0.05, 0.025),
    ("release_jump", 0.1, 0.1, 0.05),
    ("release_jump", 0.1, 0.11, 0.5),
    ("release_jump", 0.1, 1.0, 0.5),
])
def test_alpha_schedule(schedule, warmup, progress, expected):
    got = losses.alpha_schedule(progress, alpha_max=0.5, warmup_frac=warmup,
                                schedule=schedule)
    assert float(got) == pytest.approx(expected, abs=1e-7)


def test_logconf_param_defaults():
    logits, targets = _random_batch(1)
    # At progress 0.15: linear/0.2 -> a = 0.375; release_jump/0.1 -> a = 0.5,
    # release_jump/0.2 -> a = 0.075; so each default is pinned down.
    full = {"alpha_max": 0.5, "warmup_frac": 0.2, "schedule": "linear"}
    assert _value("logconf", logits, targets, 0.15, {}) == pytest.approx(
        _value("logconf", logits, targets, 0.15, full), rel=1e-6)
    jump = {"schedule": "release_jump"}
    jump_full = {"alpha_max": 0.5, "warmup_frac": 0.1, "schedule": "release_jump"}
    assert _value("logconf", logits, targets, 0.15, jump) == pytest.approx(
        _value("logconf", logits, targets, 0.15, jump_full), rel=1e-6)
    assert _value("logconf", logits, targets, 0.15, jump) != pytest.approx(
        _value("logconf", logits, targets, 0.15, dict(jump_full, warmup_frac=0.2)),
        rel=1e-4)


# ---- logconf value and gradient --------------------------------------------

# p rows: [1/2, 1/2], [1/4, 3/4], [3/4, 1/4], [1/10, 9/10].
HAND_LOGITS = [[0.0, 0.0], [0.0, LN3], [LN3, 0.0], [0.0, math.log(9.0)]]
HAND_TARGETS = [[0.8, 0.2], [0.4, 0.6], [0.7, 0.3], [0.1, 0.9]]
HAND_P = np.array([[0.5, 0.5], [0.25, 0.75], [0.75, 0.25], [0.1, 0.9]])
# r = mean(0.2, 0.6, 0.3, 0.9) = 0.5 -> two rows to class 1: the two smallest
# p_0, rows 3 (0.1) and 1 (0.25).
HAND_H = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], float)


def test_logconf_value_by_hand():
    # progress 0.1 -> a = 0.5 * 0.1 / 0.2 = 0.25; t = 0.75 y + 0.25 h:
    #   row 0: t = [0.85, 0.15]  -> ln 2
    #   row 1: t = [0.3, 0.7]    -> 0.3 ln 4 + 0.7 ln(4/3)
    #   row 2: t = [0.775, 0.225] -> 0.775 ln(4/3) + 0.225 ln 4
    #   row 3: t = [0.075, 0.925] -> 0.075 ln 10 + 0.925 ln(10/9)
    ln4, ln43 = math.log(4.0), math.log(4.0 / 3.0)
    rows = [LN2, 0.3 * ln4 + 0.7 * ln43, 0.775 * ln43 + 0.225 * ln4,
            0.075 * math.log(10.0) + 0.925 * math.log(10.0 / 9.0)]
    expected = sum(rows) / 4
    assert expected == pytest.approx(0.528859, abs=1e-6)
    got = _value("logconf", HAND_LOGITS, HAND_TARGETS, progress=0.1)
    assert got == pytest.approx(expected, rel=1e-6)


def test_logconf_gradient_by_hand():
    a = 0.25
    y = np.array(HAND_TARGETS)
    expected = ((1 - a) * (HAND_P - y) + a * (HAND_P - HAND_H)) / 4
    loss = losses.get_loss("logconf")
    grad = jax.grad(lambda z: losses.loss_value(
        loss, logits=z, targets=jnp.asarray(y, jnp.float32), progress=0.1,
        params=PAPER_PARAMS))(jnp.asarray(HAND_LOGITS, jnp.float32))
    np.testing.assert_allclose(np.asarray(grad), expected, atol=1e-6)


def test_logconf_gradient_random_batch():
    logits, targets = _random_batch(2)
    p = np.asarray(jax.nn.softmax(logits))
    y = np.asarray(targets)
    # Re-derive h with numpy: the round(r*B) rows of smallest p_0 -> class 1.
    n1 = int(np.floor(y[:, 1].mean() * 32 + 0.5))
    h = np.zeros_like(p)
    h[:, 0] = 1
    h[np.argsort(p[:, 0], kind="stable")[:n1]] = [0, 1]
    a = 0.5 * 0.05 / 0.2
    expected = ((1 - a) * (p - y) + a * (p - h)) / 32
    grad = jax.grad(lambda z: losses.loss_value(
        losses.get_loss("logconf"), logits=z, targets=targets, progress=0.05,
        params=PAPER_PARAMS))(logits)
    np.testing.assert_allclose(np.asarray(grad), expected, atol=1e-6)


# ---- gradient accumulation --------------------------------------------------

def _accumulated(loss, logits, targets, progress, n_micro, whole_batch_stats=True):
    """What an accumulating train step does: whole-batch stats, minibatch terms."""
    micro = logits.shape[0] // n_micro
    full_stats = None
    if loss.batch_targets is not None and whole_batch_stats:
        full_stats = loss.batch_targets(logits=logits, targets=targets,
                                        progress=progress, params=PAPER_PARAMS)
    means = []
    for i in range(n_micro):
        rows = slice(i * micro, (i + 1) * micro)
        stats = jax.tree_util.tree_map(lambda x: x[rows], full_stats)
        if loss.batch_targets is not None and not whole_batch_stats:
            stats = loss.batch_targets(logits=logits[rows], targets=targets[rows],
                                       progress=progress, params=PAPER_PARAMS)
        means.append(jnp.mean(loss.per_example(
            logits=logits[rows], targets=targets[rows], stats=stats,
            progress=progress, params=PAPER_PARAMS)))
    return float(jnp.mean(jnp.stack(means)))


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_accumulation_matches_whole_batch(name):
    logits, targets = _random_batch(3)
    loss = losses.get_loss(name)
    whole = losses.loss_value(loss, logits=logits, targets=targets,
                              progress=0.1, params=PAPER_PARAMS)
    assert _accumulated(loss, logits, targets, 0.1, 4) == pytest.approx(
        float(whole), rel=1e-6)


def test_logconf_minibatch_stats_would_differ():
    # The reason for the split: hardening each minibatch of 8 on its own
    # gives a different loss than hardening over the batch of 32.
    logits, targets = _random_batch(3)
    loss = losses.get_loss("logconf")
    whole = _accumulated(loss, logits, targets, 0.5, 4)
    per_micro = _accumulated(loss, logits, targets, 0.5, 4, whole_batch_stats=False)
    assert abs(whole - per_micro) > 1e-4


# ---- product ----------------------------------------------------------------

def test_product_value_by_hand():
    # t = normalise(p * y):
    #   row 0: p = [1/4, 3/4], y = [1/2, 1/2] -> t = [1/4, 3/4]
    #   row 1: p = [1/2, 1/2], y = [0.8, 0.2] -> t = [0.8, 0.2]
    #   row 2: p = [3/4, 1/4], y = [0.4, 0.6] -> t ~ [0.3, 0.15] = [2/3, 1/3]
    ln4, ln43 = math.log(4.0), math.log(4.0 / 3.0)
    rows = [0.25 * ln4 + 0.75 * ln43, LN2, (2 / 3) * ln43 + (1 / 3) * ln4]
    got = _value("product", [[0.0, LN3], [0.0, 0.0], [LN3, 0.0]],
                 [[0.5, 0.5], [0.8, 0.2], [0.4, 0.6]])
    assert got == pytest.approx(sum(rows) / 3, rel=1e-6)


def test_product_target_is_normalised_and_stopped():
    # With a stop-gradient target t, dL/dz = (p * sum(t) - t) / B, which is
    # (p - t) / B only when t sums to one.
    logits = jnp.array([[LN3, 0.0], [0.0, 0.0]])
    targets = jnp.array([[0.4, 0.6], [0.8, 0.2]])
    p = np.array([[0.75, 0.25], [0.5, 0.5]])
    t = np.array([[2 / 3, 1 / 3], [0.8, 0.2]])
    grad = jax.grad(lambda z: losses.loss_value(
        losses.get_loss("product"), logits=z, targets=targets, progress=0.0,
        params=PAPER_PARAMS))(logits)
    np.testing.assert_allclose(np.asarray(grad), (p - t) / 2, atol=1e-6)


def test_product_exponents_and_underflow():
    # product_a = 0 makes t = p: the loss is the entropy of p.
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    got = _value("product", [[0.0, LN3]], [[1.0, 0.0]],
                 params={"product_a": 0.0, "product_b": 1.0})
    assert got == pytest.approx(entropy, rel=1e-6)
    # p_1 = e^-200 underflows in float32; the target must still be [0, 1]
    # (CE = 200), not 0/0.
    assert _value("product", [[0.0, -200.0]], [[0.0, 1.0]]) == pytest.approx(
        200.0, rel=1e-6)


# ---- registry and jit ---------------------------------------------------------

@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_jit_matches_eager(name):
    logits, targets = _random_batch(4)
    loss = losses.get_loss(name)
    assert loss.name == name

    def fn(z, y, progress):
        return losses.loss_value(loss, logits=z, targets=y, progress=progress,
                                 params=PAPER_PARAMS)

    for progress in (0.0, 0.1, 0.9):
        jitted = jax.jit(fn)(logits, targets, jnp.float32(progress))
        assert float(jitted) == pytest.approx(
            float(fn(logits, targets, progress)), rel=1e-6)


def test_unknown_loss_names_choices():
    with pytest.raises(ValueError, match=r"'hinge'.*logconf, product, xent"):
        losses.get_loss("hinge")


def test_unknown_schedule_names_choices():
    with pytest.raises(ValueError, match=r"'cosine'.*linear, release_jump"):
        losses.alpha_schedule(0.5, alpha_max=0.5, warmup_frac=0.2,
                              schedule="cosine")
    logits, targets = _random_batch(5, batch=4)
    with pytest.raises(ValueError, match=r"'cosine'.*linear, release_jump"):
        _value("logconf", logits, targets, params={"schedule": "cosine"})
