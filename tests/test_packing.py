"""Packed training batches (data/packing.py): each example of a packed row
gets the logits it gets alone, for every family and pooling, and training
packed ends where training padded ends."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2s_jax.data import batching, packing
from w2s_jax.models import bert, classifier, gpt2, llama, mpnet
from w2s_jax.train import loop, losses, steps

from test_train import LOSS_PARAMS, _max_diff, _mixed_lengths, _settings


def test_first_fit_and_pack_by_hand():
    # Decreasing: 5 opens row 0, 4 opens row 1, 3 fills row 0, 2 joins row 1.
    assert packing.first_fit([5, 3, 4, 2], 8) == [[0, 1], [2, 3]]
    ids = [np.full(n, 10 + i, np.int32) for i, n in enumerate([5, 3, 4, 2])]
    input_ids, segments, example_segments = packing.pack(
        ids, np.array([0, 1, 2, 3]), rows=3, length=8, pad_id=0)
    np.testing.assert_array_equal(input_ids, [
        [10, 10, 10, 10, 10, 11, 11, 11],
        [12, 12, 12, 12, 13, 13, 0, 0],
        [0] * 8])
    np.testing.assert_array_equal(segments, [
        [1, 1, 1, 1, 1, 2, 2, 2], [3, 3, 3, 3, 4, 4, 0, 0], [0] * 8])
    np.testing.assert_array_equal(example_segments, [1, 2, 3, 4])
    with pytest.raises(ValueError, match="need 2 rows"):
        packing.pack(ids, np.array([0, 1, 2, 3]), rows=1, length=8, pad_id=0)


def test_segment_positions_restart_at_each_segment():
    from w2s_jax.models import layers
    segments = jnp.array([[1, 1, 1, 2, 2, 0, 0], [3, 3, 3, 3, 3, 3, 3]])
    np.testing.assert_array_equal(layers.segment_positions(segments),
                                  [[0, 1, 2, 0, 1, 0, 1], [0, 1, 2, 3, 4, 5, 6]])


def test_plan_splits_only_what_does_not_fit_and_fits_row_counts():
    lengths = np.array([30] * 8 + [5] * 8)
    short, long_ = np.arange(8, 16), np.arange(8)
    layouts = packing.plan(lengths, [short, long_], row_length=32, max_rows=4,
                           group_sizes=[4, 8], quantum=1, shapes=2)
    # 8 x 5 tokens: one minibatch of 2 rows (6 + 2 to a row of 32).
    assert [g.tolist() for g in layouts[0].groups] == [list(range(8))]
    # 8 x 30 tokens need 8 rows: two minibatches of 4 rows.
    assert len(layouts[1].groups) == 2 and layouts[1].rows == 4
    assert sorted(np.concatenate(layouts[1].groups).tolist()) == list(range(8))
    assert layouts[0].rows == 2
    # 40 + 240 real tokens in (1 x 2 + 2 x 4) rows of 32.
    assert packing.waste(lengths, [short, long_], layouts, 32) == pytest.approx(
        1 - 280 / 320)


@pytest.mark.parametrize("shape_cost, rows_for", [
    # Padded rows in all (rows x minibatches): 4 shapes 921, 3 (7 and 8
    # rows for one minibatch) 949, 2 (8 rows) 1028; plus cost x shapes.
    (0, {1: (6, 7, 8), 2: (5,)}),     # 921 is least
    (20, {1: (6, 7, 8), 2: (5,)}),    # 1001 < 1009 < 1068
    (64, {1: (7, 8), 2: (5,)}),       # 1141 < 1156 < 1177
    (100, {1: (8,), 2: (5,)}),        # 1228 < 1249 < 1321
])
def test_a_shape_is_kept_only_if_it_saves_more_rows_than_it_costs(
        shape_cost, rows_for):
    # The MiniLM-L3 weak stage of bench/e2e_vs_release.py: rows each batch
    # needs, by its number of minibatches.
    needs = {1: [5] + [6] * 27 + [7] * 51 + [8] * 37, 2: [5] * 10}
    assert packing._fit_row_counts(needs, 4, shape_cost) == rows_for


def _configs():
    enc = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2,
               num_attention_heads=2, intermediate_size=32,
               max_position_embeddings=40)
    return {
        "bert": bert.BertBackbone(bert.BertConfig(**enc)),
        "mpnet": mpnet.MPNetBackbone(mpnet.MPNetConfig(**enc)),
        "gpt2": gpt2.GPT2Backbone(gpt2.GPT2Config(
            vocab_size=40, n_positions=40, n_embd=16, n_layer=2, n_head=2)),
        "llama": llama.LlamaBackbone(llama.LlamaConfig(
            vocab_size=40, hidden_size=16, intermediate_size=32,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=8, max_position_embeddings=40)),
    }


@pytest.mark.parametrize("family,pooling", [
    ("bert", "first"), ("bert", "mean"), ("mpnet", "mean"), ("mpnet", "last"),
    ("gpt2", "last"), ("llama", "last"), ("llama", "mean")])
def test_packed_logits_match_one_example_per_row(family, pooling):
    rng = np.random.default_rng(0)
    # Ids from 0: pad ids inside examples too (MPNet counts positions past
    # its pad id 1, so a packed segment must restart that count).
    ids = [rng.integers(0, 40, n).astype(np.int32)
           for n in [11, 3, 7, 1, 16, 5, 9, 2]]
    module = classifier.Classifier(backbone=_configs()[family], num_classes=3,
                                   head_init="normal", pooling=pooling)
    everyone = np.arange(len(ids))
    padded = batching.pad(ids, everyone, rows=len(ids), max_ctx=16, pad_id=1)
    params = module.init(jax.random.key(1), *padded)["params"]
    alone = module.apply({"params": params}, *padded)
    packed = packing.pack(ids, everyone, rows=4, length=20, pad_id=1)
    assert len(packing.first_fit([len(x) for x in ids], 20)) == 3
    together = module.apply({"params": params}, *packed)
    np.testing.assert_allclose(together, alone, atol=2e-5, rtol=1e-5)
    assert float(np.abs(alone).max()) > 1e-2  # the head is not zero
    # Pooled row by row (prediction's layout): each row's segments from 1,
    # 4 slots a row, the empty ones dropped.
    input_ids, segments, example_segments = packed
    first = np.array([row[row > 0].min() - 1 if row.any() else 0
                      for row in segments])
    local = np.where(segments > 0, segments - first[:, None], 0)
    slots = np.zeros((len(segments), 4), np.int32)
    for r in range(len(segments)):
        n = len(set(local[r][local[r] > 0]))
        slots[r, :n] = np.arange(1, n + 1)
    by_row = module.apply({"params": params}, input_ids, local, slots)
    row_of = [int(np.nonzero((segments == s).any(1))[0][0])
              for s in example_segments]
    picked = np.stack([by_row[r, s - 1 - first[r]]
                       for r, s in zip(row_of, example_segments)])
    np.testing.assert_allclose(picked, alone, atol=2e-5, rtol=1e-5)


# 8 devices: rows come in multiples of 8, so mostly short examples.
SHORT = np.concatenate([[60], np.random.default_rng(7).integers(3, 17, 63)])


@pytest.mark.parametrize("n_devices,batch_size,sizes", [
    (1, 16, None), (8, 32, SHORT)], ids=["1 device", "8 devices"])
def test_packed_training_matches_padded(n_devices, batch_size, sizes,
                                        monkeypatch):
    """On the same batches, training packed (rows holding several examples,
    fewer rows than examples) ends on the loss curve and weights of
    training padded, with the confidence loss: its whole-batch hardening
    sees the same examples (its cross-entropy half is xent's)."""
    loss_name = "logconf"
    shuffled = batching.train_batches
    monkeypatch.setattr(batching, "train_batches", lambda *args, **kwargs: (
        shuffled(*args, **{**kwargs, "by_length": False})))
    results = {}
    for pack in (True, False):
        module, params, lengths, make_inputs, mesh = _mixed_lengths(
            4, lambda inputs: None, jax.devices()[:n_devices], sizes,
            packable=True)
        shapes, module_forward = set(), steps.module_forward(module)

        def forward(params, inputs):  # a minibatch's inputs, at trace
            shapes.add(tuple(x.shape for x in inputs))
            return module_forward(params, inputs)
        targets = np.random.default_rng(3).dirichlet([1, 1], 64).astype(np.float32)
        params, record = loop.finetune(
            name="t", forward=forward, params=params, make_inputs=make_inputs,
            lengths=lengths, train_targets=targets,
            settings=_settings(epochs=2, pack=pack, batch_size=batch_size,
                               lr_schedule="constant", lr=1e-4),
            loss=losses.get_loss(loss_name), loss_params=LOSS_PARAMS,
            mesh=mesh, seed=0)
        results[pack] = (params, record, shapes)
    (p_pack, r_pack, s_pack), (p_pad, r_pad, s_pad) = results[True], results[False]
    assert all(len(s) == 3 for s in s_pack) and all(len(s) == 2 for s in s_pad)
    # Packed: fewer rows than examples in some minibatch, rows of 64 tokens.
    assert any(ids[0] < seg[0] for ids, _, seg in s_pack)
    assert {ids[1] for ids, _, _ in s_pack} == {64}
    assert r_pack["padding_waste"] < r_pad["padding_waste"]
    np.testing.assert_allclose(r_pack["loss_curve"], r_pad["loss_curve"],
                               rtol=1e-5, atol=1e-6)
    assert _max_diff(p_pack, p_pad) < 1e-5
    assert not np.allclose(r_pad["loss_curve"][0], r_pad["loss_curve"][-1])


def test_pack_needs_inputs_that_can_be_packed():
    """Inputs without a pack function (features, candidates) cannot train
    packed: pack on says so rather than train on random padded batches."""
    module, params, lengths, make_inputs, mesh = _mixed_lengths(
        5, lambda inputs: None, jax.devices()[:1])
    assert not hasattr(make_inputs, "pack")
    with pytest.raises(ValueError, match=r"\[t\] settings.pack is on but"):
        loop.finetune(name="t", forward=steps.module_forward(module),
                      params=params, make_inputs=make_inputs, lengths=lengths,
                      train_targets=np.full((64, 2), 0.5, np.float32),
                      settings=_settings(pack=True),
                      loss=losses.get_loss("xent"), loss_params={}, mesh=mesh,
                      seed=0)


def test_packed_batches_are_random_and_compile_before_the_first_step(
        monkeypatch):
    """Packed, a step's batch is the next batch_size examples of the
    epoch's permutation (no grouping by length), as the paper's code; and
    every packed batch shape (minibatches x rows) is traced and compiled
    ahead of the steps, none during them."""
    events = []
    ahead = loop._compile_ahead

    def recording(*args, **kwargs):
        ahead(*args, **kwargs)
        events.append("steps start")
    monkeypatch.setattr(loop, "_compile_ahead", recording)
    module, params, lengths, make_inputs, mesh = _mixed_lengths(
        8, lambda inputs: None, jax.devices()[:1], packable=True)
    packed, pack = [], make_inputs.pack

    def recording_pack(indices, rows, length):
        packed.append(np.asarray(indices))
        return pack(indices, rows, length)
    make_inputs.pack = recording_pack
    module_forward = steps.module_forward(module)

    def forward(params, inputs):  # runs when jit traces the step
        events.append(inputs[0].shape)
        return module_forward(params, inputs)
    loop.finetune(name="t", forward=forward, params=params,
                  make_inputs=make_inputs, lengths=lengths,
                  train_targets=np.full((64, 2), 0.5, np.float32),
                  settings=_settings(epochs=2, pack=True),
                  loss=losses.get_loss("xent"), loss_params={}, mesh=mesh,
                  seed=0)
    start = events.index("steps start")
    assert len(set(events[:start])) > 1  # several shapes, so it can tell
    assert events[start + 1:] == []
    batches = [set(order[i:i + 16].tolist()) for epoch in (0, 1)
               for order in [np.random.default_rng([0, epoch]).permutation(64)]
               for i in range(0, 64, 16)]
    assert packed and all(any(set(p.tolist()) <= b for b in batches)
                          for p in packed)
    # Length-grouped batches would hold similar lengths: these do not.
    assert min(np.ptp(lengths[list(b)]) for b in batches) > 30


def test_eval_batches_and_plan_by_hand():
    lengths = np.array([5, 3, 4, 2, 7])
    # First-fit decreasing in rows of 8: 7 | 5+3 | 4+2, two rows a batch.
    assert packing.first_fit(lengths, 8) == [[4], [0, 1], [2, 3]]
    assert packing.eval_batches(lengths, length=8, rows=2) == [
        [[4], [0, 1]], [[2, 3]]]
    # Fullest row: 2 examples -> 2 slots; the last batch's 1 row rounds
    # up to 8 (at most the 16 of a whole batch).
    plan = packing.eval_plan([lengths], length=8, rows=16, quantum=1)
    assert plan == packing.EvalPacking(length=8, rows=(8, 16), slots=2)
    # Two sets: 40 examples of 2 tokens fill 10 rows of 4 (4 -> 4 slots,
    # 5 would make 8); quantum 3 rounds both last batches (3 and 10 rows)
    # up to 24, a whole batch.
    plan = packing.eval_plan([lengths, np.full(40, 2)], length=8, rows=24,
                             quantum=3)
    assert plan == packing.EvalPacking(length=8, rows=(24,), slots=4)
    with pytest.raises(ValueError, match="16 rows a batch"):
        packing.eval_plan([lengths], length=8, rows=16, quantum=3)
    plan = packing.eval_plan([np.full(5, 1)], length=8, rows=16, quantum=1)
    assert plan.slots == 8


@pytest.mark.parametrize("n_devices", [1, 8])
def test_packed_prediction_matches_padded(n_devices):
    """loop.predict packed (several examples to a row, a short last batch)
    gives every example the probabilities it gets padded, in order."""
    from w2s_jax.core import sharding
    from w2s_jax.models import registry
    model = registry.resolve("tiny-gpt2-random")
    rng = np.random.default_rng(5)
    sizes = np.concatenate([[64, 33], rng.integers(1, 30, 75)])
    ids = [rng.integers(0, 256, n).astype(np.int32) for n in sizes]
    make_inputs = loop.token_inputs(ids, pad_id=0, max_ctx=64, packable=True)
    mesh = sharding.make_mesh({"data": -1}, devices=jax.devices()[:n_devices])
    module = steps.build_classifier(model, num_classes=3, linear_probe=False,
                                    head_init="normal")
    params = steps.init_params(module, model, head_init="normal", seed=0,
                               mesh=mesh)
    predict_step = steps.make_predict_step(steps.module_forward(module), mesh)
    plan = packing.eval_plan([sizes], length=64, rows=16, quantum=n_devices)
    assert len(plan.rows) == 2  # a whole batch and a shorter last one
    common = dict(make_inputs=make_inputs, lengths=sizes, batch_size=16,
                  max_ctx=64, mesh=mesh, num_classes=3)
    padded = loop.predict(predict_step, params, **common)
    packed = loop.predict(predict_step, params, packed=plan, **common)
    np.testing.assert_allclose(packed, padded, rtol=1e-5, atol=1e-6)
    assert padded.std(0).min() > 1e-3  # the head makes examples differ
