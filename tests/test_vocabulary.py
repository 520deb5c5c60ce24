"""A learner's compact vocabulary (w2s_jax/models/vocabulary.py): the ids by
hand, the table cut on a sharded mesh, and a stage that trains the same
with it as without it."""
import jax
import numpy as np
import pytest

from w2s_jax.config import model_config
from w2s_jax.core import sharding
from w2s_jax.experiment import setup
from w2s_jax.experiment.stage import train_stage
from w2s_jax.models import registry, tokenizers, vocabulary
from w2s_jax.train import steps

from test_recipes import _config, mirror  # noqa: F401


def test_used_ids_are_renumbered_by_their_rank():
    vocab = vocabulary.used_by([np.array([5, 3, 9]), np.array([3, 7])],
                               full_size=300, pad_id=0)
    # The used ids and the pad, ascending; rows rounded up to 128.
    np.testing.assert_array_equal(vocab.ids, [0, 3, 5, 7, 9])
    assert vocab.size == 128
    np.testing.assert_array_equal(vocab.renumber(np.array([[9, 3], [0, 7]])),
                                  [[4, 1], [0, 3]])
    full = np.arange(600, dtype=np.float32).reshape(300, 2)
    table = vocab.table(full)
    np.testing.assert_array_equal(table[:5], full[[0, 3, 5, 7, 9]])
    assert table.shape == (128, 2) and not table[5:].any()
    with pytest.raises(ValueError, match="token id 4 is not in the vocabulary"):
        vocab.renumber(np.array([3, 4]))


def test_ids_below_keep_below_keep_their_numbers():
    # MPNet: pad 1, and its positions read the pad id itself.
    vocab = vocabulary.used_by([np.array([0, 2000, 17, 2])], full_size=30527,
                               pad_id=1, keep_below=2)
    np.testing.assert_array_equal(vocab.ids, [0, 1, 2, 17, 2000])
    np.testing.assert_array_equal(vocab.renumber(np.array([0, 1, 2000])), [0, 1, 4])


def test_no_vocabulary_where_it_would_not_be_smaller():
    assert vocabulary.used_by([np.arange(5)], full_size=128, pad_id=0) is None
    with pytest.raises(ValueError, match=r"must lie in \[0, 100\); found 3..100"):
        vocabulary.used_by([np.array([3, 100])], full_size=100, pad_id=3)


def test_renumbered_tokenizer_encodes_compact_ids():
    raw = tokenizers.ByteTokenizer()
    vocab = vocabulary.used_by([np.array(raw.encode(["cab"])[0])], full_size=256,
                               pad_id=raw.pad_id)
    tok = vocabulary.RenumberedTokenizer(raw, vocab)
    # ids: 0 (pad), 97 a, 98 b, 99 c.
    assert tok.encode(["bca"]) == [[2, 3, 1]] and tok.pad_id == 0
    with pytest.raises(ValueError, match="token id 100"):
        tok.encode(["d"])


@pytest.mark.parametrize("tensor,split", [(2, True), (3, False)])
def test_table_cut_on_the_mesh(tensor, split):
    """The compact table holds the vocabulary's rows of the whole one,
    split over the tensor axis as the whole one was, or with its rows
    whole where the axis does not divide them (128 rows over 3)."""
    model = registry.resolve("tiny-gpt2-random")
    mesh = sharding.make_mesh({"tensor": tensor}, devices=jax.devices()[:tensor])
    module = steps.build_classifier(model, num_classes=2, linear_probe=False,
                                    head_init="zeros")
    # 256 rows over 3 do not divide either: the whole table is replicated.
    params = steps.init_params(module, model, head_init="zeros", seed=0, mesh=mesh)
    vocab = vocabulary.used_by([np.array([7, 200, 31])], full_size=256, pad_id=0)
    compact = steps.compact_embedding(params, model, vocab)
    full, cut = params["backbone"]["wte"]["embedding"], compact["backbone"]["wte"]["embedding"]
    np.testing.assert_array_equal(np.asarray(cut), vocab.table(np.asarray(full)))
    assert (cut.sharding.spec[0] == "tensor") is split
    assert cut.sharding.spec[1:] == full.sharding.spec[1:]
    np.testing.assert_array_equal(np.asarray(compact["head"]["kernel"]),
                                  np.asarray(params["head"]["kernel"]))


def test_a_stage_trains_the_same_with_a_compact_vocabulary(mirror, tmp_path):  # noqa: F811
    """Random byte GPT-2 (sst2 uses under 128 of its 256 byte ids): the
    stage's predictions and its finetuned features are those of the whole
    table, bit for bit, under the confidence loss over 2 minibatches."""
    arrays, learners = {}, {}
    for compact in (False, True):
        config = _config(mirror, model_config("tiny-gpt2-random"),
                         model_config("tiny-gpt2-random"),
                         n_train=96, n_test=32, max_ctx=64, overlength="truncate",
                         train__epochs=1, train__batch_size=16,
                         train__minibatch_size=8, train__compact_vocab=compact)
        ctx = setup.build(config, str(tmp_path / str(compact)))
        half_a, _ = ctx.halves()
        learners[compact] = learner = ctx.learner(0)
        arrays[compact] = train_stage(
            ctx, "weak", learner, train_idx=half_a, targets=ctx.gold(half_a),
            loss_name="logconf", model_index=0, description="",
            feature_layers=(1,)).arrays
    assert learners[False].vocab is None
    vocab = learners[True].vocab
    assert vocab.size == 128 and learners[True].net.backbone_config.vocab_size == 128
    assert "vocabulary" in learners[True].spec
    assert learners[True].ids["train"][0].max() < len(vocab.ids)
    for name in ("test_probs", "features_L1_test"):
        np.testing.assert_array_equal(arrays[True][name], arrays[False][name])

