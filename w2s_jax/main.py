"""Run a weak-to-strong experiment from a config file.

    python -m w2s_jax.main --config=configs/nlp_aux.py --workdir=runs/nlp_aux
    python -m w2s_jax.main --config=configs/smoke.py --workdir=runs/smoke \
        --config.seed=1 --config.train.epochs=3

Rerunning the same command reuses every finished stage under --workdir and
resumes an interrupted one from its last checkpoint. On SIGTERM a stage in
training saves a checkpoint and the process exits with status 143.

The console shows the run's progress lines, warnings and errors; every
library's INFO log (orbax, absl, jax, datasets...) goes to
<workdir>/logs/run-<UTC time>-<pid>.log, created once the run's checks
have passed. --verbosity=0 (or -v 0) shows the INFO lines on the console
too (see w2s_jax/core/console.py).

A problem the user can fix (a bad flag or config value, bad data, missing
or unusable weights, no hub, an unusable workdir) is one line on stderr,
``error: <message>``, and exit status 2 (usage: flags, config) or 1 (the
rest); see w2s_jax/core/errors.py. Anything else is a bug and keeps its
traceback.

Multi-host: start the same command on every host, with
--config.distributed.enabled=true on Cloud TPU (the cluster is detected),
or with W2S_COORDINATOR=host:port W2S_NUM_PROCESSES=n W2S_PROCESS_ID=i
(or the --config.distributed.* fields) elsewhere; --workdir must be shared.
"""
from w2s_jax.core import host_memory

if __name__ == "__main__":
    # First of all, before JAX starts its CPU threads: with
    # W2S_KEEP_HOST_MEMORY=1 the train step's freed buffers are reused, not
    # faulted in again every step (w2s_jax/core/host_memory.py). Not on
    # import: that would change malloc for whoever imports this module.
    host_memory.apply_default()

import logging  # noqa: E402
import sys  # noqa: E402

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

# Light imports only: flag and config-file errors are reported before
# jax and the data libraries load (see main()).
from w2s_jax import config as config_lib  # noqa: E402
from w2s_jax.core import console, errors  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file with get_config().", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for stages and results; reused on reruns.")
_SHARD = flags.DEFINE_string(
    "shard", "", "i/n: run the i-th of n deterministic shares of the config's "
    "grid (or seeds x losses); shards may share one workdir.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        fail(errors.UsageError(
            f"unexpected arguments {argv[1:]}; every option is a flag, "
            f"e.g. --config.seed=1 (python -m w2s_jax.main --helpshort)"))
    from w2s_jax import run
    from w2s_jax.core import checkpoint, distributed

    try:
        # Library logs to a file, not the console; the file is created once
        # the run's checks have passed.
        console.setup(_WORKDIR.value, defer_file=True)
        # Before anything touches devices: the job's devices span every host.
        distributed.initialize(_CONFIG.value)
        from w2s_jax.experiment import grid
        shard = grid.parse_shard(_SHARD.value) if _SHARD.value else None
        run.run(_CONFIG.value, _WORKDIR.value, shard=shard)
    except errors.ExpectedError as err:
        fail(err)
    except checkpoint.Preempted as stop:
        console.open_log_file()
        print(stop, file=sys.stderr, flush=True)
        sys.exit(checkpoint.PREEMPTED_EXIT_CODE)
    except BaseException:
        # A bug (or an interrupt): keep its log, and its traceback.
        console.open_log_file()
        raise


def fail(err: errors.ExpectedError):
    """The one place an expected failure becomes a message and a status."""
    console.to_log_file(logging.ERROR, f"{type(err).__name__}: {err}")
    print(f"error: {err}", file=sys.stderr, flush=True)
    sys.exit(err.exit_status)


def _parse_flags(argv):
    """absl's flag parsing, its errors as usage errors (status 2)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as err:
        fail(errors.UsageError(f"{err} (python -m w2s_jax.main --helpshort "
                               f"lists the flags)"))


def run_cli():
    try:
        config_lib.check_config_flag(sys.argv)
        config_lib.check_override_flags(sys.argv)
    except errors.ExpectedError as err:
        fail(err)
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run_cli()
