"""Losses against hand-computed values (w2s_facts.md section 3)."""
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2s_jax.train import losses

LN3 = math.log(3.0)
LN2 = math.log(2.0)
PAPER_PARAMS = {"alpha_max": 0.5, "warmup_frac": 0.2, "schedule": "linear"}
# Enough for every loss (each ignores the keys it does not own): window's
# radius has no default without training targets. With it, window trains on
# rows with max p < 0.7, some but not all rows of a random batch.
ALL_PARAMS = {**PAPER_PARAMS, "radius": 0.2}


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
                                  params=ALL_PARAMS)
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


def test_harden_balanced_multiclass_quotas_by_hand():
    # Uniform prior over a batch of 6: quotas 2/2/2. Pairs by decreasing p:
    # (0,c0) .7  (1,c0) .6  (2,c0) .55 [c0 full]  (3,c1) .5  (2,c1) .4
    # (4,c0) .4 [full]  (5,c2) .4  (4,c1) .35 [full]  (3,c0)... (4,c2) .25
    probs = jnp.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.55, 0.4, 0.05],
                       [0.3, 0.5, 0.2], [0.4, 0.35, 0.25], [0.3, 0.3, 0.4]])
    hard = np.asarray(losses.harden_balanced(probs, jnp.full(3, 1 / 3)))
    np.testing.assert_array_equal(hard, np.eye(3)[[0, 0, 1, 1, 2, 2]])
    # Prior [0.5, 0.25, 0.25]: quotas 3/1.5/1.5 -> 3, 2, 1 (the remainder
    # tie between classes 1 and 2 goes to the lower one).
    np.testing.assert_array_equal(
        losses.class_quotas(jnp.array([0.5, 0.25, 0.25]), 6), [3, 2, 1])
    hard = np.asarray(losses.harden_balanced(probs, jnp.array([0.5, 0.25, 0.25])))
    np.testing.assert_array_equal(hard, np.eye(3)[[0, 0, 0, 1, 1, 2]])
    np.testing.assert_array_equal(hard.sum(0), [3, 2, 1])


@pytest.mark.parametrize("seed", range(5))
def test_harden_balanced_multiclass_counts_match_quotas(seed):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(4), size=32).astype(np.float32)
    prior = rng.dirichlet(np.ones(4)).astype(np.float32)
    hard = np.asarray(losses.harden_balanced(jnp.asarray(probs), jnp.asarray(prior)))
    assert (hard.sum(1) == 1).all()
    quotas = np.asarray(losses.class_quotas(jnp.asarray(prior), 32))
    assert quotas.sum() == 32 and np.abs(quotas - prior / prior.sum() * 32).max() < 1
    np.testing.assert_array_equal(hard.sum(0), quotas)


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

def _accumulated(loss, logits, targets, progress, n_micro, whole_batch_stats=True,
                 params=PAPER_PARAMS):
    """What an accumulating train step does: whole-batch stats, minibatch terms."""
    micro = logits.shape[0] // n_micro
    full_stats = None
    if loss.batch_targets is not None and whole_batch_stats:
        full_stats = loss.batch_targets(logits=logits, targets=targets,
                                        progress=progress, params=params)
    means = []
    for i in range(n_micro):
        rows = slice(i * micro, (i + 1) * micro)
        stats = jax.tree_util.tree_map(lambda x: x[rows], full_stats)
        if loss.batch_targets is not None and not whole_batch_stats:
            stats = loss.batch_targets(logits=logits[rows], targets=targets[rows],
                                       progress=progress, params=params)
        means.append(jnp.mean(loss.per_example(
            logits=logits[rows], targets=targets[rows], stats=stats,
            progress=progress, params=params)))
    return float(jnp.mean(jnp.stack(means)))


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_accumulation_matches_whole_batch(name):
    logits, targets = _random_batch(3)
    loss = losses.get_loss(name)
    whole = losses.loss_value(loss, logits=logits, targets=targets,
                              progress=0.1, params=ALL_PARAMS)
    assert _accumulated(loss, logits, targets, 0.1, 4,
                        params=ALL_PARAMS) == pytest.approx(float(whole), rel=1e-6)


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
                                 params=ALL_PARAMS)

    for progress in (0.0, 0.1, 0.9):
        jitted = jax.jit(fn)(logits, targets, jnp.float32(progress))
        assert float(jitted) == pytest.approx(
            float(fn(logits, targets, progress)), rel=1e-6)


def test_unknown_loss_names_choices():
    with pytest.raises(ValueError, match=r"'hinge'.*entropy, kl, logconf, "
                                         r"product, window, xent"):
        losses.get_loss("hinge")


def test_unknown_schedule_names_choices():
    with pytest.raises(ValueError, match=r"'cosine'.*linear, release_jump"):
        losses.alpha_schedule(0.5, alpha_max=0.5, warmup_frac=0.2,
                              schedule="cosine")
    logits, targets = _random_batch(5, batch=4)
    with pytest.raises(ValueError, match=r"'cosine'.*linear, release_jump"):
        _value("logconf", logits, targets, params={"schedule": "cosine"})


# ---- kl ---------------------------------------------------------------------

def _np_softmax(logits):
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _np_ce(p, y):
    return -np.sum(np.asarray(y, np.float64) * np.log(p), axis=-1)


# p rows: [1/4, 3/4], [1/2, 1/2], [9/10, 1/10], [2/5, 3/5].
NEW_LOGITS = [[0.0, LN3], [0.0, 0.0], [math.log(9.0), 0.0], [0.0, math.log(1.5)]]
NEW_P = np.array([[0.25, 0.75], [0.5, 0.5], [0.9, 0.1], [0.4, 0.6]])
NEW_TARGETS = [[0.5, 0.5], [1.0, 0.0], [0.2, 0.8], [0.3, 0.7]]


def test_kl_value_by_hand():
    y = np.array(NEW_TARGETS)
    # sum_c y_c log(y_c / p_c) with 0 log 0 = 0 (row 1's zero target).
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(y > 0, y * np.log(y / NEW_P), 0.0)
    expected = terms.sum(axis=1).mean()
    # Rows: .5 ln 2 + .5 ln(2/3); ln 2; .2 ln(2/9) + .8 ln 8; .3 ln(3/4) + .7 ln(7/6).
    rows = [0.5 * LN2 + 0.5 * math.log(2 / 3), LN2,
            0.2 * math.log(2 / 9) + 0.8 * math.log(8.0),
            0.3 * math.log(0.75) + 0.7 * math.log(7 / 6)]
    assert expected == pytest.approx(sum(rows) / 4, rel=1e-12)
    assert expected == pytest.approx(0.555332, abs=1e-6)
    assert _value("kl", NEW_LOGITS, NEW_TARGETS) == pytest.approx(expected, rel=1e-6)
    # KL differs from CE by the targets' entropy, and is 0 at p = y.
    assert _value("xent", NEW_LOGITS, NEW_TARGETS) > expected + 0.1
    assert _value("kl", NEW_LOGITS, NEW_P) == pytest.approx(0.0, abs=1e-6)


def test_kl_gradient_is_xents():
    y = jnp.asarray(NEW_TARGETS, jnp.float32)
    z = jnp.asarray(NEW_LOGITS, jnp.float32)
    grad = jax.grad(lambda z: losses.loss_value(
        losses.get_loss("kl"), logits=z, targets=y, progress=0.0, params={}))(z)
    np.testing.assert_allclose(np.asarray(grad), (NEW_P - np.array(NEW_TARGETS)) / 4,
                               atol=1e-6)


# ---- window -----------------------------------------------------------------

def test_window_value_and_mask_by_hand():
    # radius 0.2: rows with max p < 0.7 train, i.e. rows 1 (0.5) and 3 (0.6);
    # rows 0 (0.75) and 2 (0.9) give 0 but still count in the mean.
    ce = _np_ce(NEW_P, NEW_TARGETS)
    expected = (ce[1] + ce[3]) / 4
    got = _value("window", NEW_LOGITS, NEW_TARGETS, params={"radius": 0.2})
    assert got == pytest.approx(expected, rel=1e-6)
    # radius 0.3 (threshold 0.8) lets row 0 in too.
    got = _value("window", NEW_LOGITS, NEW_TARGETS, params={"radius": 0.3})
    assert got == pytest.approx((ce[0] + ce[1] + ce[3]) / 4, rel=1e-6)
    # Strict "<": at radius 0 even the tie p = [1/2, 1/2] is left out.
    assert _value("window", NEW_LOGITS, NEW_TARGETS, params={"radius": 0.0}) == 0.0


def test_window_gradient_by_hand():
    # The mask is a stop-gradient constant: rows inside get xent's (p - y)/B,
    # the others nothing.
    y = np.array(NEW_TARGETS)
    expected = (NEW_P - y) / 4
    expected[[0, 2]] = 0.0
    grad = jax.grad(lambda z: losses.loss_value(
        losses.get_loss("window"), logits=z, targets=jnp.asarray(y, jnp.float32),
        progress=0.0, params={"radius": 0.2}))(jnp.asarray(NEW_LOGITS, jnp.float32))
    np.testing.assert_allclose(np.asarray(grad), expected, atol=1e-6)


def test_window_radius_is_median_of_weak_margins():
    # |q - 0.5| = [0.4, 0.1, 0.2, 0.05, 0.5]: median 0.2 (the mean is 0.25).
    q = np.array([0.9, 0.6, 0.3, 0.55, 0.0])
    targets = np.stack([1 - q, q], axis=1).astype(np.float32)
    expected = float(np.median(np.abs(q - 0.5)))
    assert expected == pytest.approx(0.2)
    resolved = losses.resolve_params("window", {}, targets)
    assert resolved == {"radius": pytest.approx(expected, abs=1e-6)}
    assert type(resolved["radius"]) is float
    # A set radius wins over the data.
    assert losses.resolve_params("window", {"radius": 0.05}, targets) == {
        "radius": 0.05}
    # More classes: max_c q_c - 0.5 = [0.2, 0.3, 0.0] -> median 0.2.
    three = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.5, 0.25, 0.25]])
    assert losses.resolve_params("window", {}, three)["radius"] == pytest.approx(0.2)


def test_window_radius_needs_training_targets():
    with pytest.raises(ValueError, match=r"radius.*training targets"):
        losses.resolve_params("window", {})
    logits, targets = _random_batch(6, batch=4)
    with pytest.raises(ValueError, match=r"radius.*training targets"):
        _value("window", logits, targets, params=PAPER_PARAMS)


# ---- entropy ----------------------------------------------------------------

def _np_entropy(p):
    return -np.sum(p * np.log(p), axis=-1)


def test_entropy_value_by_hand():
    # progress 0.1, linear warmup 0.2 to 0.5: a = 0.25.
    a = 0.25
    expected = np.mean((1 - a) * _np_ce(NEW_P, NEW_TARGETS) + a * _np_entropy(NEW_P))
    got = _value("entropy", NEW_LOGITS, NEW_TARGETS, progress=0.1)
    assert got == pytest.approx(expected, rel=1e-6)
    # a = 0 at the start: plain xent.
    assert _value("entropy", NEW_LOGITS, NEW_TARGETS, progress=0.0) == pytest.approx(
        _value("xent", NEW_LOGITS, NEW_TARGETS), rel=1e-6)
    # The release's schedule brings its own warmup (0.1): a = 0.5 at 0.15.
    expected = np.mean(0.5 * _np_ce(NEW_P, NEW_TARGETS) + 0.5 * _np_entropy(NEW_P))
    got = _value("entropy", NEW_LOGITS, NEW_TARGETS, progress=0.15,
                 params={"schedule": "release_jump"})
    assert got == pytest.approx(expected, rel=1e-6)


def test_entropy_gradient_flows_through_entropy():
    # d/dz [(1 - a) CE + a H] = (1 - a)(p - y) - a p (log p + H), per row / B.
    a = 0.25
    y = np.array(NEW_TARGETS)
    h = _np_entropy(NEW_P)[:, None]
    expected = ((1 - a) * (NEW_P - y) - a * NEW_P * (np.log(NEW_P) + h)) / 4
    grad = np.asarray(jax.grad(lambda z: losses.loss_value(
        losses.get_loss("entropy"), logits=z, targets=jnp.asarray(y, jnp.float32),
        progress=0.1, params=PAPER_PARAMS))(jnp.asarray(NEW_LOGITS, jnp.float32)))
    np.testing.assert_allclose(grad, expected, atol=1e-6)
    # The follow-up's stopped entropy would leave (1 - a) x xent's gradient.
    stopped = (1 - a) * (NEW_P - y) / 4
    assert np.max(np.abs(grad - stopped)) > 1e-2


# ---- accumulation of the new losses -------------------------------------------

@pytest.mark.parametrize("name", ["kl", "window", "entropy"])
def test_new_losses_accumulate_exactly(name):
    logits, targets = _random_batch(7)
    if name == "window":
        # The guard: the batch has rows on both sides of the window.
        inside = np.asarray(jax.nn.softmax(logits)).max(axis=1) < 0.7
        assert 0 < inside.sum() < len(inside)
    loss = losses.get_loss(name)
    for progress in (0.05, 0.6):
        whole = losses.loss_value(loss, logits=logits, targets=targets,
                                  progress=progress, params=ALL_PARAMS)
        for n_micro in (2, 8):
            assert _accumulated(loss, logits, targets, progress, n_micro,
                                params=ALL_PARAMS) == pytest.approx(
                float(whole), rel=1e-6)


# ---- parameters: declaration, config values, resolution ------------------------

def test_param_fields_union():
    assert losses.param_fields() == {
        "alpha_max": float, "product_a": float, "product_b": float,
        "radius": float, "schedule": str, "warmup_frac": float}


@pytest.mark.parametrize("name, user, expected", [
    ("xent", {}, {}),
    ("kl", {}, {}),
    ("logconf", {}, {"alpha_max": 0.5, "schedule": "linear", "warmup_frac": 0.2}),
    ("logconf", {"schedule": "release_jump"},
     {"alpha_max": 0.5, "schedule": "release_jump", "warmup_frac": 0.1}),
    ("logconf", {"schedule": "release_jump", "warmup_frac": 0.2},
     {"alpha_max": 0.5, "schedule": "release_jump", "warmup_frac": 0.2}),
    ("logconf", {"alpha_max": 0.75, "schedule": None},
     {"alpha_max": 0.75, "schedule": "linear", "warmup_frac": 0.2}),
    ("entropy", {}, {"alpha_max": 0.5, "schedule": "linear", "warmup_frac": 0.2}),
    ("product", {}, {"product_a": 1.0, "product_b": 1.0}),
    ("window", {"radius": 0.1}, {"radius": 0.1}),
])
def test_resolve_params_exact(name, user, expected):
    resolved = losses.resolve_params(name, user, np.full((4, 2), 0.5, np.float32))
    assert resolved == expected
    # Plain python values, so the dict keys cached stages and JSON.
    assert all(type(v) in (float, str) for v in resolved.values())
    assert json.loads(json.dumps(resolved)) == expected


def test_resolve_params_rejects_foreign_keys():
    with pytest.raises(ValueError, match=r"loss_params.radius.*'logconf'"):
        losses.resolve_params("logconf", {"radius": 0.1})


def test_user_params_keeps_the_losss_own_set_values():
    config = {"alpha_max": 0.75, "schedule": None, "warmup_frac": None,
              "product_a": None, "product_b": None, "radius": None}
    run = ["xent", "logconf"]
    assert losses.user_params("xent", config, run) == {}
    got = losses.user_params("logconf", config, run)
    assert got == {"alpha_max": 0.75}
    assert losses.user_params("logconf", {"alpha_max": 1}, ["logconf"]) == {
        "alpha_max": 1.0}
    assert type(losses.user_params("logconf", {"alpha_max": 1},
                                   ["logconf"])["alpha_max"]) is float
    assert losses.user_params("window", {"radius": None}, ["window"]) == {}


def test_user_params_unknown_key_for_the_loss():
    with pytest.raises(ValueError) as err:
        losses.user_params("xent", {"alpha_max": 0.5}, ["xent"])
    message = str(err.value)
    assert message.startswith(
        "config.loss_params.alpha_max is not a parameter of loss 'xent'; "
        "valid keys: xent: (none)")
    assert "entropy, logconf" in message  # who does own it


def test_user_params_key_of_a_loss_outside_the_run():
    # Valid for window, but the run sweeps xent and logconf.
    with pytest.raises(ValueError) as err:
        losses.user_params("logconf", {"radius": 0.1}, ["xent", "logconf"])
    message = str(err.value)
    assert ("config.loss_params.radius is not a parameter of losses 'xent', "
            "'logconf'; valid keys: xent: (none); logconf: alpha_max, "
            "schedule, warmup_frac") in message
    assert "window" in message


@pytest.mark.parametrize("key, value, pattern", [
    ("alpha_max", 1.5, r"config.loss_params.alpha_max=1.5 .*0 <= alpha_max <= 1"),
    ("alpha_max", -0.1, r"alpha_max=-0.1 .*0 <= alpha_max <= 1"),
    ("alpha_max", float("nan"), r"alpha_max=nan .*0 <= alpha_max <= 1"),
    ("alpha_max", "0.5", r"alpha_max='0.5' is not a number"),
    ("alpha_max", True, r"alpha_max=True is not a number"),
    ("warmup_frac", 2.0, r"warmup_frac=2.0 .*0 <= warmup_frac <= 1"),
    ("schedule", "cosine", r"schedule='cosine'.*linear, release_jump"),
    ("radius", -0.1, r"config.loss_params.radius=-0.1 .*radius >= 0"),
    ("product_a", -1.0, r"product_a=-1.0 .*product_a >= 0"),
])
def test_user_params_bad_values(key, value, pattern):
    run = ["logconf", "window", "product"]
    owner = {"radius": "window", "product_a": "product"}.get(key, "logconf")
    with pytest.raises(ValueError, match=pattern):
        losses.user_params(owner, {key: value}, run)
    # Also when another loss of the run is being set up.
    with pytest.raises(ValueError, match=pattern):
        losses.user_params("xent", {key: value}, run)
