"""Sweep summaries: sample standard deviation, PGR spreads that say how many
seeds they cover, and file names that tell two sweeps apart."""
import numpy as np
import pytest

from w2s_jax import config as config_lib
from w2s_jax import run
from w2s_jax.report import summary


def test_spread_uses_the_sample_standard_deviation():
    got = summary.spread([0.5, 0.7, 0.9])
    assert got["std"] == pytest.approx(0.2)  # sqrt(((-.2)^2 + 0 + .2^2) / 2)
    assert got["std"] != pytest.approx(np.std([0.5, 0.7, 0.9]))  # population: 0.163
    assert summary.spread([0.5])["std"] is None  # undefined for one seed


def test_spread_counts_the_seeds_it_covers():
    got = summary.spread([0.6, None, 0.8])
    assert (got["n"], got["n_total"], got["mean"]) == (2, 3, pytest.approx(0.7))
    assert "(2 of 3 seeds defined)" in summary._pgr_spread(got)
    assert summary._pgr_spread(summary.spread([None, None])) == "n/a (0 of 2 seeds)"


def _results(seed, accs, pgr):
    weak, w2s, ceiling = accs
    gold = {name: {"accuracy": acc, "auroc": acc}
            for name, acc in zip(("weak", "w2s", "ceiling"), accs)}
    agree = {"overall": 0.8, "weak_correct": 0.9, "weak_wrong": 0.4}
    return {"recipe": "w2s", "task": "sst2", "models": ["a", "b"], "seed": seed,
            "stage_order": ["weak", "w2s", "ceiling"], "comparison_order": ["w2s"],
            "loss": "xent", "gold_test": gold,
            "stages": {n: {"key": f"{n}{seed}"} for n in gold},
            "comparisons": {"w2s": {"supervisor": "weak", "student": "w2s",
                                    "ceiling": "ceiling",
                                    "pgr": {"accuracy": pgr, "auroc": pgr},
                                    "agreement": agree}}}


def test_summary_pgr_of_means_and_per_seed_spread():
    runs = {"xent": [_results(0, (0.6, 0.7, 0.8), 0.5),
                     _results(1, (0.6, 0.6, 0.5), None),  # ceiling below weak
                     _results(2, (0.6, 0.8, 0.8), 1.0)]}
    got = summary.summarize(runs)["losses"]["xent"]["comparisons"]["w2s"]["accuracy"]
    # Means 0.6, 0.7, 0.7: PGR of means (0.7 - 0.6) / (0.7 - 0.6) = 1.
    assert got["pgr_of_means"] == pytest.approx(1.0)
    assert got["pgr_per_seed"]["n"] == 2 and got["pgr_per_seed"]["n_total"] == 3
    assert got["pgr_per_seed"]["std"] == pytest.approx(np.std([0.5, 1.0], ddof=1))


def test_two_sweeps_in_one_workdir_get_different_files():
    base = config_lib.base_config()
    other = config_lib.base_config()
    other.n_train = 1000
    names = {run.sweep_name(c, [0, 1], ["xent"]) for c in (base, other)}
    assert len(names) == 2
    # ... and the seeds, losses and recipe are in the name.
    name = run.sweep_name(base, [0, 1, 2], ["xent", "logconf"])
    assert "_w2s_" in name and "seeds0-1-2" in name and "xent-logconf" in name
    # Settings that only say how a run executes do not change it.
    moved = config_lib.base_config()
    moved.checkpoint_every_steps = 7
    assert run.sweep_name(moved, [0], ["xent"]) == run.sweep_name(base, [0], ["xent"])
