"""The launchers wire the right commands, with gcloud/SLURM replaced by shims
that record what they were asked to do (no cloud or cluster here)."""
import os
import stat
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _shim(directory, name, body):
    path = directory / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _env(bin_dir):
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_tpu_vm_creates_copies_installs_runs_and_collects(tmp_path):
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    # `describe` fails: the VM does not exist yet, so it must be created.
    _shim(bin_dir, "gcloud", f'echo "$*" | tr "\\n" " " >> {log}; echo >> {log}\n'
          '[ "$4" = describe ] && exit 1; exit 0\n')
    proc = subprocess.run(
        ["bash", os.path.join(REPO, "launch", "tpu_vm.sh"), "w2s",
         "us-central2-b", "v4-32", "configs/nlp_aux.py", "/mnt/shared/runs",
         "--config.seed=3"],
        cwd=tmp_path, env=_env(bin_dir), capture_output=True, text=True,
        timeout=120)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    verbs = [c.split()[3] for c in calls]
    assert verbs == ["describe", "create", "scp", "ssh", "ssh", "scp"]
    assert "--accelerator-type v4-32" in calls[1]
    assert "--worker=all" in calls[2] and "--worker=all" in calls[4]
    run = calls[4]
    assert "W2S_DISTRIBUTED=1" in run
    assert "python -m w2s_jax.main --config='configs/nlp_aux.py'" in run
    assert "--workdir='/mnt/shared/runs'" in run and "--config.seed=3" in run
    assert "--worker=0" in calls[5] and "w2s:/mnt/shared/runs/results" in calls[5]
    assert (tmp_path / "results-w2s").is_dir()


def test_slurm_gives_each_node_its_rank_and_the_coordinator(tmp_path):
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    _shim(bin_dir, "scontrol", 'printf "node-a\\nnode-b\\n"\n')
    # srun runs its command once per node, as SLURM would.
    _shim(bin_dir, "srun", 'shift\nfor r in 0 1; do SLURM_PROCID=$r "$@"; done\n')
    _shim(bin_dir, "python", f'echo "$W2S_COORDINATOR $W2S_NUM_PROCESSES '
          f'$W2S_PROCESS_ID $*" >> {log}\n')
    env = {**_env(bin_dir), "SLURM_JOB_NODELIST": "node-[a-b]",
           "SLURM_NNODES": "2"}
    proc = subprocess.run(
        ["bash", "launch/slurm_gpu.sbatch", "configs/nlp_aux.py", "/shared/r",
         "--config.seed=1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = log.read_text().splitlines()
    expected = ("-m w2s_jax.main --config=configs/nlp_aux.py "
                "--workdir=/shared/r --config.seed=1")
    assert lines == [f"node-a:12345 2 0 {expected}",
                     f"node-a:12345 2 1 {expected}"]
