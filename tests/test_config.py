"""The config schema: model lists, loss parameters owned by their losses."""
import pytest

from w2s_jax import config as config_lib
from w2s_jax.experiment import stage
from w2s_jax.train import losses


def _resolved(config, loss):
    return losses.resolve_params(
        loss, losses.user_params(loss, stage._set_loss_params(config),
                                 sorted(losses.LOSSES)), None)


def test_a_schedule_brings_its_own_warmup():
    config = config_lib.base_config()
    config.loss = "logconf"
    assert _resolved(config, "logconf") == {
        "alpha_max": 0.5, "schedule": "linear", "warmup_frac": 0.2}
    config.loss_params.schedule = "release_jump"
    config_lib.validate(config)
    assert _resolved(config, "logconf")["warmup_frac"] == 0.1  # the release's
    config.loss_params.warmup_frac = 0.3  # an explicit value still wins
    assert _resolved(config, "logconf")["warmup_frac"] == 0.3


def test_loss_params_are_checked_against_the_runs_losses():
    config = config_lib.base_config()
    config.loss_params.radius = 0.1  # window's, but the run trains xent
    with pytest.raises(ValueError, match="radius.*xent.*window"):
        config_lib.validate(config)
    config.losses = "xent,window"
    config_lib.validate(config)  # window takes it


def test_model_list_and_its_checks():
    config = config_lib.base_config()
    assert [m.name for m in config_lib.model_list(config)] == ["gpt2", "gpt2-medium"]
    config.models.m1 = config_lib.model_config("bow-tfidf")
    config.models.m2 = config_lib.model_config("minilm-l3")
    config.models.m3 = config_lib.model_config("minilm-l6")
    assert [m.name for m in config_lib.model_list(config)] == [
        "bow-tfidf", "minilm-l3", "minilm-l6"]
    config_lib.validate(config)
    config.models.m3.mode = "frozen"
    with pytest.raises(ValueError, match=r"config.models.m3.mode='frozen'.*features"):
        config_lib.validate(config)
    config.models.m3.mode = "features"
    config.strong.name = "gpt2-large"  # would be silently ignored
    with pytest.raises(ValueError, match="config.strong is set but config.models"):
        config_lib.validate(config)


def test_misspelt_model_slot_override_is_named():
    config = config_lib.base_config()
    config.models.m1 = config_lib.model_config("bow-tfidf")
    config.models.m3 = config_lib.model_config("minilm-l6")
    with pytest.raises(ValueError, match="slots m1, m2"):
        config_lib.validate(config)
    with pytest.raises(ValueError, match=r"config.models.m2.lrr"):
        config_lib.check_override_flags(["x", "--config.models.m2.lrr=1"])
