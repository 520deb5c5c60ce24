"""Padded lengths fitted to a pass's batches (batching.fit_rungs)."""
import itertools

import numpy as np
import pytest

from w2s_jax.data import batching


def _slots(lengths, batches, max_ctx, rungs=None):
    return sum(len(b) * batching.padded_length(int(lengths[b].max()), max_ctx,
                                               rungs) for b in batches)


def _brute_force(longest, max_ctx, k, quantum):
    """The least total padded length over every set of at most k rungs
    drawn from the batches' (rounded) longest lengths."""
    candidates = sorted({min(-(-n // quantum) * quantum,
                             batching.padded_length(n, max_ctx))
                         for n in longest})
    best = np.inf
    for size in range(1, k + 1):
        for rungs in itertools.combinations(candidates, size):
            if rungs[-1] < max(longest):
                continue
            best = min(best, sum(next(r for r in rungs if r >= n)
                                 for n in longest))
    return best


def _batches(rng, n_batches, batch_size, max_len):
    lengths = rng.integers(1, max_len + 1, n_batches * batch_size)
    return lengths, list(np.arange(len(lengths)).reshape(n_batches, batch_size))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("quantum", [1, 8])
def test_fitted_rungs_are_the_best_as_many_as_the_ladder_uses(seed, quantum):
    rng = np.random.default_rng(seed)
    lengths, batches = _batches(rng, 12, 4, max_len=60)
    longest = [int(lengths[b].max()) for b in batches]
    ladder = {batching.padded_length(n, 60) for n in longest}
    rungs = batching.fit_rungs(lengths, batches, 60, quantum=quantum)
    assert len(rungs) <= len(ladder)
    assert all(r % quantum == 0 or r == 60 for r in rungs)
    total = sum(batching.padded_length(n, 60, rungs) for n in longest)
    assert total == _brute_force(longest, 60, len(ladder), quantum)
    assert _slots(lengths, batches, 60, rungs) <= _slots(lengths, batches, 60)


def test_a_hand_case():
    # Longest lengths 3, 3, 3 and 17: the ladder pads them to 16, 16, 16,
    # 24 (72 in all, 2 rungs); two fitted rungs give 3, 3, 3, 17 (26).
    lengths = np.array([1, 3, 2, 3, 3, 3, 17, 5])
    batches = [np.array([0, 1]), np.array([2, 3]), np.array([4, 5]),
               np.array([6, 7])]
    assert batching.fit_rungs(lengths, batches, 64, quantum=1) == (3, 17)
    # Multiples of 8, where accelerators want them: 8, 8, 8, 24 (48).
    assert batching.fit_rungs(lengths, batches, 64, quantum=8) == (8, 24)
    # max_ctx 20 caps the top rung, even when that is no multiple of 8.
    assert batching.fit_rungs(lengths, batches, 20, quantum=8) == (8, 20)
    ids = [np.arange(1, n + 1, dtype=np.int32) for n in lengths]
    input_ids, mask = batching.pad(ids, batches[3], rows=2, max_ctx=64,
                                   pad_id=0, rungs=(3, 17))
    assert input_ids.shape == (2, 17)
    np.testing.assert_array_equal(mask.sum(1), [17, 5])
    assert batching.padding_waste(lengths, batches, 64, (3, 17)) == pytest.approx(
        1 - lengths.sum() / (2 * (3 + 3 + 3 + 17)))


def test_fewer_slots_than_the_ladder_on_real_length_spreads():
    """Short texts (sst2-like: most under the ladder's floor of 16) gain
    the most; a single length needs one rung, the length itself."""
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(2.5, 0.5, 2048).astype(int), 2, 64)
    batches = batching.train_batches(lengths, batch_size=32, rng=rng)
    ladder = _slots(lengths, batches, 64)
    for quantum in (1, 8):  # 8 is the default
        rungs = batching.fit_rungs(lengths, batches, 64, quantum=quantum)
        assert _slots(lengths, batches, 64, rungs) < 0.9 * ladder
    assert all(r % 8 == 0 for r in batching.fit_rungs(lengths, batches, 64))
    same = np.full(64, 11)
    assert batching.fit_rungs(same, [np.arange(32), np.arange(32, 64)], 64,
                              quantum=1) == (11,)


def test_every_batch_pads_to_one_of_its_rungs():
    """Also past max_ctx (loop.finetune takes any lengths): the fitted
    rungs hold every batch's longest example, and padded_length picks one."""
    longest = [150, 151, 33, 40, 48, 49]
    lengths = np.array(longest)
    batches = [np.array([i]) for i in range(len(longest))]
    rungs = batching.fit_rungs(lengths, batches, 100)
    for n in longest:
        assert batching.padded_length(n, 100, rungs) in rungs
        assert batching.padded_length(n, 100, rungs) >= n


def test_eval_rungs_cover_every_set_with_the_ladders_count():
    """One predict step's sets (test, validation, training examples) share
    one set of rungs: no more than the ladder's shapes over all of them."""
    rng = np.random.default_rng(4)
    sets = [rng.integers(1, 200, n) for n in (1000, 400, 2048)]
    rungs = batching.eval_rungs(sets, 64, 512)
    shapes, ladder = set(), set()
    for lengths in sets:
        for b in batching.eval_batches(lengths, batch_size=64):
            shapes.add(batching.padded_length(int(lengths[b].max()), 512, rungs))
            ladder.add(batching.padded_length(int(lengths[b].max()), 512))
    assert shapes == set(rungs) and len(shapes) <= len(ladder)
    # Fitted per set instead, the step would meet more shapes.
    per_set = {r for lengths in sets for r in batching.fit_rungs(
        lengths, batching.eval_batches(lengths, batch_size=64), 512)}
    assert len(per_set) > len(shapes)
