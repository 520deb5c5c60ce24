"""Run a weak-to-strong experiment from a config file.

    python -m w2s_jax.main --config=configs/nlp_aux.py --workdir=runs/nlp_aux
    python -m w2s_jax.main --config=configs/smoke.py --workdir=runs/smoke \
        --config.seed=1 --config.train.epochs=3

Rerunning the same command reuses every finished stage under --workdir and
resumes an interrupted one from its last checkpoint. On SIGTERM a stage in
training saves a checkpoint and the process exits with status 143.

The console shows the run's progress lines, warnings and errors; every
library's INFO log (orbax, absl, jax, datasets...) goes to
<workdir>/logs/run-<UTC time>-<pid>.log. --verbosity=0 (or -v 0) shows the
INFO lines on the console too (see w2s_jax/core/console.py).

Multi-host: start the same command on every host, with
--config.distributed.enabled=true on Cloud TPU (the cluster is detected),
or with W2S_COORDINATOR=host:port W2S_NUM_PROCESSES=n W2S_PROCESS_ID=i
(or the --config.distributed.* fields) elsewhere; --workdir must be shared.
"""
import sys

from absl import app, flags
from ml_collections import config_flags

from w2s_jax import run
from w2s_jax.core import checkpoint, console, distributed
from w2s_jax import config as config_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file with get_config().", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for stages and results; reused on reruns.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    console.setup(_WORKDIR.value)  # library logs to a file, not the console
    # Before anything touches devices: the job's devices span every host.
    distributed.initialize(_CONFIG.value)
    try:
        run.run(_CONFIG.value, _WORKDIR.value)
    except checkpoint.Preempted as stop:
        print(stop, file=sys.stderr, flush=True)
        sys.exit(checkpoint.PREEMPTED_EXIT_CODE)


def run_cli():
    try:
        config_lib.check_override_flags(sys.argv)
    except ValueError as err:
        sys.exit(f"error: {err}")
    app.run(main)


if __name__ == "__main__":
    run_cli()
