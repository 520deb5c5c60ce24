"""Early stopping: three answers from one training run.

The training loop's evaluation hook predicts the gold test set and a
validation slice held out from the stage's own training examples every N
steps (and at the last step). From that history:

- `final`: the last step (what a run without early stopping reports);
- `oracle`: the step with the best gold TEST accuracy. It looks at test
  labels, so it is an upper bound, never a method (the paper's "cheating"
  early stopping);
- `honest_acc` / `honest_auroc`: the step with the best accuracy / AUROC on
  the validation slice against the stage's own targets (weak labels for a
  student, gold for a gold-trained stage): what a practitioner without gold
  labels could do.

Ties go to the earliest step. Evaluations are written to the stage's
in-progress directory as they happen, so a resumed stage keeps them.
"""
from __future__ import annotations

import dataclasses
import glob
import os

import numpy as np

from w2s_jax.core import distributed
from w2s_jax.core.errors import UsageError
from w2s_jax.data import splits
from w2s_jax.report import metrics



@dataclasses.dataclass(frozen=True)
class ValidationSplit:
    fit: np.ndarray  # positions in the stage's training examples to train on
    held_out: np.ndarray  # positions held out for validation


def validation_split(groups: np.ndarray, fraction: float,
                     seed: int) -> ValidationSplit:
    """A seeded slice of about `fraction` of a stage's training positions
    (at least one), whole groups only (`groups`: the group of each
    position), so no held-out example shares a passage with one trained on;
    with one example per group it is exactly a random `fraction`."""
    n = len(groups)
    n_val = max(1, int(round(n * fraction)))
    if n_val >= n:
        raise UsageError(f"config.early_stopping.val_fraction={fraction} "
                         f"leaves no training examples out of {n}")
    rng = np.random.default_rng([seed, splits.stable_hash("validation")])
    held = splits.take_whole_groups(groups, rng, n_val)
    if not held.any() or held.all():
        raise UsageError(f"config.early_stopping.val_fraction={fraction}: the "
                         f"stage's {n} examples fall into too few groups to "
                         f"hold out whole groups for validation")
    return ValidationSplit(fit=np.flatnonzero(~held), held_out=np.flatnonzero(held))


def save_eval(directory: str, step: int, probs: dict[str, np.ndarray]) -> None:
    """Store one evaluation (process 0), atomically."""
    if not distributed.is_primary():
        return
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"step-{step:08d}.npz")
    tmp = path + ".tmp.npz"
    np.savez(tmp, **probs)
    os.replace(tmp, path)


def load_evals(directory: str) -> dict[str, np.ndarray]:
    """{"eval_steps" [E], "eval_test_probs" [E,N,K], "eval_val_probs"}."""
    distributed.barrier("early-stopping evaluations written")
    paths = sorted(glob.glob(os.path.join(directory, "step-*.npz")))
    paths = [p for p in paths if not p.endswith(".tmp.npz")]
    steps, test, val = [], [], []
    for path in paths:
        with np.load(path, allow_pickle=False) as z:
            steps.append(int(os.path.basename(path)[5:13]))
            test.append(z["test"])
            val.append(z["val"])
    return {"eval_steps": np.asarray(steps, np.int64),
            "eval_test_probs": np.stack(test), "eval_val_probs": np.stack(val)}


def select(history: dict[str, np.ndarray], *, val_targets: np.ndarray,
           test_labels: np.ndarray) -> dict:
    """Each selection's step index, step and gold test metrics."""
    val_labels = val_targets.argmax(-1)
    test_scores = [metrics.accuracy(p, test_labels)
                   for p in history["eval_test_probs"]]
    val_acc = [metrics.accuracy(p, val_labels) for p in history["eval_val_probs"]]
    val_auroc = [metrics.summarize_predictions(p, val_labels)["auroc"]
                 for p in history["eval_val_probs"]]
    chosen = {"final": len(test_scores) - 1,
              "oracle": int(np.argmax(test_scores)),
              "honest_acc": int(np.argmax(val_acc)),
              "honest_auroc": int(np.nanargmax(val_auroc))
              if not np.all(np.isnan(val_auroc)) else len(test_scores) - 1}
    return {name: {"index": index, "step": int(history["eval_steps"][index]),
                   "val_accuracy": val_acc[index],
                   "val_auroc": _none_if_nan(val_auroc[index]),
                   **metrics.summarize_predictions(
                       history["eval_test_probs"][index], test_labels)}
            for name, index in chosen.items()}


def _none_if_nan(value):
    return None if value is None or np.isnan(value) else float(value)
