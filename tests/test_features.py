"""Frozen features, the bag-of-words supervisor, and feature-mode experiments."""
import json

import numpy as np
import pytest

from w2s_jax.core import sharding
from w2s_jax.train import features
from w2s_jax.models import bow, registry


def test_tfidf_by_hand():
    texts = ["good good film", "bad film", "good plot"]
    featurizer = bow.TfidfFeaturizer(vocab_size=10, min_df=2).fit(texts)
    # Terms in >= 2 documents: "good" (2), "film" (2); ties alphabetical.
    assert featurizer.vocab == {"film": 0, "good": 1}
    idf = np.log(4 / 3) + 1  # smoothed: log((1 + n) / (1 + df)) + 1
    out = featurizer.transform(["good good film", "nothing known"])
    tf_good = 1 + np.log(2)  # sublinear term frequency
    row = np.array([idf, tf_good * idf])
    np.testing.assert_allclose(out[0], row / np.linalg.norm(row), rtol=1e-6)
    np.testing.assert_array_equal(out[1], 0.0)


def test_tfidf_without_shared_terms_fails_clearly():
    with pytest.raises(ValueError, match="no term occurs"):
        bow.TfidfFeaturizer(min_df=2).fit(["a b", "c d"])


def test_layer_features_match_hf_hidden_states(tmp_path):
    torch = pytest.importorskip("torch")
    import transformers

    cfg = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32,
                                  n_layer=3, n_head=4)
    torch.manual_seed(0)
    hf = transformers.GPT2Model(cfg).eval()
    hf.save_pretrained(tmp_path)
    # The checkpoint has no tokenizer files: build the resolved model by hand.
    model = registry.ResolvedModel(
        name="tiny", family="gpt2",
        backbone_config=registry.FAMILIES["gpt2"].config_from_hf(
            json.loads((tmp_path / "config.json").read_text())),
        tokenizer=_Pad0(), default_lr=1e-3, default_minibatch_size=None,
        checkpoint_dir=str(tmp_path), source={})
    import jax
    from w2s_jax.train import steps

    mesh = sharding.make_mesh({"data": -1}, devices=jax.devices()[:1])
    module = steps.build_classifier(model, num_classes=2, linear_probe=True,
                                    head_init="zeros", pooling="mean")
    params = steps.init_params(module, model, head_init="zeros", seed=0,
                               mesh=mesh)["backbone"]
    ids = [np.array([5, 0, 7, 9], np.int32), np.array([3, 4], np.int32)]
    with torch.no_grad():
        states = [hf(torch.tensor(x[None].astype(np.int64)),
                     output_hidden_states=True).hidden_states for x in ids]
    for layer in (1, 2):
        got = features.extract(model, params, ids, pooling="mean", layer=layer,
                               batch_size=2, max_ctx=32, mesh=mesh, name="t")
        want = np.stack([s[layer][0].numpy().mean(0) for s in states])
        np.testing.assert_allclose(got, want, atol=1e-4)
    final = features.extract(model, params, ids, pooling="last", layer=-1,
                             batch_size=2, max_ctx=32, mesh=mesh, name="t")
    want = np.stack([s[-1][0].numpy()[-1] for s in states])
    np.testing.assert_allclose(final, want, atol=1e-4)
    with pytest.raises(ValueError, match="feature_layer=4"):
        registry.block_name(model, 4)


class _Pad0:
    pad_id = 0
    vocab_size = 64


def test_standardize_uses_train_statistics():
    train_feats = np.array([[0.0, 10.0], [2.0, 30.0]], np.float32)
    test_feats = np.array([[1.0, 20.0]], np.float32)
    tr, te = features.standardize(train_feats, test_feats)
    np.testing.assert_allclose(tr.mean(0), 0.0, atol=1e-6)
    np.testing.assert_allclose(te, [[0.0, 0.0]], atol=1e-5)


@pytest.fixture
def mirror():
    import os

    path = os.environ.get("W2S_DATA_DIR")
    if not path:
        pytest.skip("needs a local mirror (W2S_DATA_DIR); hub runs use the smoke test")
    return path


def test_feature_mode_experiment_with_a_bag_of_words_supervisor(mirror, tmp_path, capsys):
    """BoW weak -> frozen features of a random byte GPT-2; two losses share
    the weak stage and the cached features."""
    from w2s_jax import config as config_lib
    from w2s_jax import run

    config = config_lib.base_config()
    config.task, config.data_dir = "sst2", mirror
    config.n_train, config.n_test, config.max_ctx = 2000, 400, 96
    config.overlength = "truncate"
    config.weak = config_lib.model_config("bow-tfidf", epochs=10)
    config.strong = config_lib.model_config("tiny-gpt2-random", mode="features",
                                            epochs=2)
    config.losses = "xent,logconf"
    summary = run.run(config, str(tmp_path))
    out = capsys.readouterr().out
    assert out.count("[features] stage written") == 2  # bow once, gpt2 once
    assert "[weak] reusing finished stage" in out  # the logconf run
    assert "[features] reusing finished stage" in out
    entry = summary["losses"]["logconf"]["stages"]
    # A TF-IDF linear model on 1000 SST-2 phrases is well above chance
    # (0.69 measured on this split).
    assert entry["weak"]["accuracy"]["mean"] > 0.62
    assert set(summary["losses"]) == {"xent", "logconf"}
    assert (tmp_path / "results").is_dir()
    sweeps = [p for p in (tmp_path / "results").iterdir()
              if p.name.startswith("sweep_") and p.suffix == ".md"]
    assert len(sweeps) == 1 and "| logconf |" in sweeps[0].read_text()
