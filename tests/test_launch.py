"""The launchers wire the right commands, with gcloud/SLURM replaced by shims
that record what they were asked to do (no cloud or cluster here).

The gcloud shim also plays the TPU worker: `ssh --command=CMD` runs CMD in a
fake home whose system `python3` is the image's 3.10 and whose uv (fetched
by a fake curl) makes venvs reporting 3.11, so the install step meets the
interpreters it would meet on a real `tpu-ubuntu2204-base` worker.
"""
import json
import os
import re
import stat
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU_VM = os.path.join(REPO, "launch", "tpu_vm.sh")
SLURM = os.path.join(REPO, "launch", "slurm_gpu.sbatch")
LIBTPU_LINKS = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"


def _jax_pin():
    """The jax version setup.py pins (at HEAD: the tree the launcher ships)."""
    setup = subprocess.run(["git", "show", "HEAD:setup.py"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout
    return re.search(r'"jax==([^"]+)"', setup).group(1)


def _script(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _shim(directory, name, body):
    _script(directory / name, "#!/usr/bin/env bash\n" + body)


def _env(bin_dir, **extra):
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", **extra}
    for key in ("SHARD", "TPU_RUNTIME_VERSION", "W2S_DATA_DIR"):
        if key not in extra:
            env.pop(key, None)
    return env


def _fake_python(path, version, log):
    """A python that knows only its version; `-c CODE` runs CODE (on the real
    interpreter) with sys.version_info/sys.version reporting `version`."""
    major, minor, micro = version.split(".")
    _script(path, f"""#!/usr/bin/env bash
echo "$0 $*" >> {log}
case "${{1:-}}" in
  -V|--version) echo "Python {version}" ;;
  -c) exec {sys.executable} -c "import collections, sys
sys.version_info = collections.namedtuple('version_info', 'major minor micro releaselevel serial')({major}, {minor}, {micro}, 'final', 0)
sys.version = '{version}'
$2" "${{@:3}}" ;;
esac
""")


class Worker:
    """A recording gcloud plus the one TPU worker it stands for."""

    def __init__(self, tmp_path, venv_version="3.11.9", vm_exists=False):
        self.bin = tmp_path / "bin"          # the laptop's PATH head: gcloud
        self.fakes = tmp_path / "fakes"      # what the worker's image has
        self.home = tmp_path / "worker_home"
        self.log = tmp_path / "gcloud.log"    # one JSON argv per gcloud call
        self.remote_log = tmp_path / "worker.log"  # what ran on the worker
        for d in (self.bin, self.fakes / "path", self.home):
            d.mkdir(parents=True)
        system = self.fakes / "path"  # the image's PATH: Python 3.10, pip, curl
        _fake_python(system / "python3", "3.10.12", self.remote_log)
        _fake_python(system / "python", "3.10.12", self.remote_log)
        for pip in ("pip", "pip3"):
            _shim(system, pip, f'echo "$0 $*" >> {self.remote_log}\n')
        _fake_python(self.fakes / "venv_python", venv_version, self.remote_log)
        _shim(self.fakes, "uv", f"""echo "uv $*" >> {self.remote_log}
case "$1" in
  venv) dir=${{@: -1}}; mkdir -p "$dir/bin"
        cp {self.fakes / 'venv_python'} "$dir/bin/python" ;;
  pip) ;;
  *) exit 1 ;;
esac
""")
        # curl | sh installs uv where the real installer would put it.
        _shim(system, "curl", f"""echo "curl $*" >> {self.remote_log}
echo 'd=${{UV_UNMANAGED_INSTALL:-${{UV_INSTALL_DIR:-$HOME/.local/bin}}}}; mkdir -p "$d"; cp {self.fakes / "uv"} "$d/uv"'
""")
        _script(self.bin / "gcloud", f"""#!{sys.executable}
import json, os, shutil, subprocess, sys
args = sys.argv[1:]
with open({str(self.log)!r}, "a") as f:
    f.write(json.dumps(args) + "\\n")
verb = args[3] if len(args) > 3 else ""
if verb == "describe":
    sys.exit({0 if vm_exists else 1})
home = {str(self.home)!r}
if verb == "scp":
    words, skip = [], False
    for a in args[4:]:
        if skip: skip = False
        elif a == "--zone": skip = True
        elif not a.startswith("-"): words.append(a)
    src, dst = words
    if ":" in dst:  # to the worker, relative to its home
        shutil.copy(src, os.path.join(home, dst.split(":", 1)[1]))
    else:           # back from the worker
        os.makedirs(os.path.join(dst, os.path.basename(src)), exist_ok=True)
if verb == "ssh":
    i = next(i for i, a in enumerate(args) if a.startswith("--command"))
    cmd = args[i].split("=", 1)[1] if "=" in args[i] else args[i + 1]
    env = {{"HOME": home, "PATH": {str(system)!r} + ":/usr/bin:/bin"}}
    sys.exit(subprocess.run(["bash", "-c", cmd], env=env).returncode)
""")

    def launch(self, *args, cwd, **env):
        return subprocess.run(["bash", TPU_VM, *args], cwd=cwd,
                              env=_env(self.bin, **env), capture_output=True,
                              text=True, timeout=120)

    def calls(self):
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def ran(self):
        if not self.remote_log.exists():
            return []
        return self.remote_log.read_text().splitlines()


ARGS = ("w2s", "us-central2-b", "v4-32", "configs/nlp_aux.py",
        "/mnt/shared/runs", "--config.seed=3")


def test_tpu_vm_creates_copies_installs_runs_and_collects(tmp_path):
    worker = Worker(tmp_path)
    proc = worker.launch(*ARGS, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    calls = worker.calls()
    assert [c[3] for c in calls] == ["describe", "create", "scp", "ssh", "ssh", "scp"]
    create = " ".join(calls[1])
    assert "--accelerator-type v4-32" in create
    assert "--version tpu-ubuntu2204-base" in create
    assert "--worker=all" in calls[2] and "--worker=all" in calls[4]
    # The committed tree reached the worker and was unpacked there.
    assert (worker.home / "w2s_jax" / "setup.py").is_file()
    # The experiment ran once, on the venv's Python, with our arguments.
    venv_python = f"{worker.home}/w2s-venv/bin/python"
    runs = [r for r in worker.ran() if "-m w2s_jax.main" in r]
    assert runs == [f"{venv_python} -m w2s_jax.main --config=configs/nlp_aux.py "
                    "--workdir=/mnt/shared/runs --config.seed=3"]
    assert "W2S_DISTRIBUTED=1" in calls[4][-1]
    assert "--worker=0" in calls[5] and "w2s:/mnt/shared/runs/results" in calls[5]
    assert (tmp_path / "results-w2s" / "results").is_dir()


def test_tpu_vm_installs_into_a_311_venv_never_the_image_python(tmp_path):
    worker = Worker(tmp_path)
    proc = worker.launch(*ARGS, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    ran = worker.ran()
    venv_python = f"{worker.home}/w2s-venv/bin/python"
    # uv was fetched (the image has none) and made the 3.11 venv.
    assert any(r.startswith("curl ") and "astral.sh/uv/install.sh" in r for r in ran)
    assert f"uv venv --python 3.11 {worker.home}/w2s-venv" in ran
    # The version check ran on the venv's Python, before any install.
    checks = [i for i, r in enumerate(ran) if r.startswith(f"{venv_python} -c")]
    installs = [i for i, r in enumerate(ran) if r.startswith("uv pip install")]
    assert checks and installs and checks[0] < installs[0]
    # Everything installed went into the venv: libtpu via the pinned
    # jax[tpu] from JAX's libtpu index, then the project itself.
    assert all(f"--python {venv_python} " in ran[i] for i in installs)
    assert any(f"jax[tpu]=={_jax_pin()} -f {LIBTPU_LINKS}" in ran[i]
               for i in installs)
    assert any(ran[i].endswith(" -e .[gcs]") for i in installs)
    # The image's Python 3.10 and its pip were never used.
    system = str(worker.fakes / "path")
    assert [r for r in ran if r.startswith(system) and "curl" not in r] == []


def test_tpu_vm_stops_when_the_venv_python_is_older_than_311(tmp_path):
    worker = Worker(tmp_path, venv_version="3.10.12")
    proc = worker.launch(*ARGS, cwd=tmp_path)
    assert proc.returncode != 0
    assert "Python 3.11+" in proc.stderr and "3.10.12" in proc.stderr
    assert not any(r.startswith("uv pip install") for r in worker.ran())
    assert [c[3] for c in worker.calls()] == ["describe", "create", "scp", "ssh"]


@pytest.mark.parametrize("accelerator,image", [
    ("v4-32", "tpu-ubuntu2204-base"),
    ("v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5e-8", "v2-alpha-tpuv5-lite"),
    ("v5p-8", "v2-alpha-tpuv5"),
    ("v6e-8", "v2-alpha-tpuv6e"),
])
def test_tpu_vm_picks_the_runtime_image_of_the_generation(tmp_path, accelerator, image):
    worker = Worker(tmp_path)
    args = list(ARGS)
    args[2] = accelerator
    proc = worker.launch(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    create = worker.calls()[1]
    assert create[3] == "create"
    assert create[create.index("--version") + 1] == image
    assert create[create.index("--accelerator-type") + 1] == accelerator
    # An explicit runtime version wins over the generation's default.
    proc = worker.launch("--dry-run", *args, cwd=tmp_path,
                         TPU_RUNTIME_VERSION="my-image")
    assert proc.returncode == 0, proc.stderr
    assert "--version my-image" in proc.stdout and image not in proc.stdout


def test_tpu_vm_refuses_an_unknown_generation(tmp_path):
    worker = Worker(tmp_path)
    args = list(ARGS)
    args[2] = "v9-8"
    proc = worker.launch(*args, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "v9-8" in lines[0]
    for known in ("v4", "v5litepod", "v5e", "v5p", "v6e"):
        assert known in lines[0]
    assert worker.calls() == [] and worker.ran() == []


@pytest.mark.parametrize("where", [0, 3, len(ARGS)])
def test_tpu_vm_dry_run_prints_every_command_and_runs_nothing(tmp_path, where):
    worker = Worker(tmp_path)
    args = list(ARGS)
    args.insert(where, "--dry-run")
    proc = worker.launch(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert worker.calls() == [] and worker.ran() == []
    assert not (tmp_path / "results-w2s").exists()
    assert os.listdir(worker.home) == []
    gcloud = [line.split() for line in proc.stdout.splitlines()
              if line.startswith("gcloud compute tpus tpu-vm ")]
    assert [g[4] for g in gcloud] == ["describe", "create", "scp", "ssh", "ssh", "scp"]
    assert "--dry-run" not in proc.stdout
    assert re.search(rf"""jax\[tpu\]=={re.escape(_jax_pin())}['"]? -f {LIBTPU_LINKS}""",
                     proc.stdout)
    assert "-m w2s_jax.main --config=configs/nlp_aux.py" in proc.stdout
    assert "--config.seed=3" in proc.stdout


def test_tpu_vm_shard_gets_its_own_slice_and_passes_shard(tmp_path):
    worker = Worker(tmp_path)
    proc = worker.launch(*ARGS, cwd=tmp_path, SHARD="1/4")
    assert proc.returncode == 0, proc.stderr
    calls = worker.calls()
    assert len(calls) == 6 and all(
        any(a == "w2s-shard1" or a.startswith("w2s-shard1:") for a in c) for c in calls)
    assert [r for r in worker.ran() if "-m w2s_jax.main" in r][0].endswith(
        "--workdir=/mnt/shared/runs --config.seed=3 --shard=1/4")
    assert (tmp_path / "results-w2s-shard1").is_dir()


@pytest.mark.parametrize("shard", ["4/4", "1", "a/2", "-1/2", "01/4"])
def test_tpu_vm_refuses_a_malformed_shard(tmp_path, shard):
    worker = Worker(tmp_path)
    proc = worker.launch(*ARGS, cwd=tmp_path, SHARD=shard)
    assert proc.returncode == 2 and "SHARD" in proc.stderr
    assert worker.calls() == []


class Cluster:
    """Recording scontrol/srun; srun runs its command once per node."""

    def __init__(self, tmp_path):
        self.bin, self.log = tmp_path / "bin", tmp_path / "calls.log"
        self.bin.mkdir()
        _shim(self.bin, "scontrol", f'echo "scontrol $*" >> {self.log}\n'
              'printf "node-a\\nnode-b\\n"\n')
        _shim(self.bin, "srun", f'echo "srun $1" >> {self.log}\nshift\n'
              'for r in 0 1; do SLURM_PROCID=$r "$@"; done\n')
        _shim(self.bin, "python", f'echo "$W2S_COORDINATOR $W2S_NUM_PROCESSES '
              f'$W2S_PROCESS_ID $*" >> {self.log}\n')

    def submit(self, *args, **env):
        env = {**_env(self.bin), "SLURM_JOB_NODELIST": "node-[a-b]",
               "SLURM_NNODES": "2", **env}
        return subprocess.run(
            ["bash", SLURM, "configs/nlp_aux.py", "/shared/r", "--config.seed=1",
             *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)

    def lines(self):
        return self.log.read_text().splitlines() if self.log.exists() else []


EXPECTED = ("-m w2s_jax.main --config=configs/nlp_aux.py "
            "--workdir=/shared/r --config.seed=1")


def test_slurm_gives_each_node_its_rank_and_the_coordinator(tmp_path):
    cluster = Cluster(tmp_path)
    proc = cluster.submit()
    assert proc.returncode == 0, proc.stderr
    assert cluster.lines() == ["scontrol show hostnames node-[a-b]",
                               "srun --kill-on-bad-exit=1",
                               f"node-a:12345 2 0 {EXPECTED}",
                               f"node-a:12345 2 1 {EXPECTED}"]


@pytest.mark.parametrize("first,task,shard", [(0, 2, "2/4"), (1, 1, "0/4")])
def test_slurm_job_array_passes_its_shard(tmp_path, first, task, shard):
    cluster = Cluster(tmp_path)
    proc = cluster.submit(
        SLURM_ARRAY_TASK_ID=str(task), SLURM_ARRAY_TASK_COUNT="4",
        SLURM_ARRAY_TASK_MIN=str(first), SLURM_ARRAY_TASK_MAX=str(first + 3))
    assert proc.returncode == 0, proc.stderr
    port = 12345 + task  # array tasks on one node must not share the port
    assert cluster.lines()[2:] == [
        f"node-a:{port} 2 {rank} {EXPECTED} --shard={shard}" for rank in (0, 1)]


def test_slurm_refuses_an_array_with_gaps(tmp_path):
    cluster = Cluster(tmp_path)
    proc = cluster.submit(
        SLURM_ARRAY_TASK_ID="2", SLURM_ARRAY_TASK_COUNT="4",
        SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_MAX="6")
    assert proc.returncode == 2 and "contiguous" in proc.stderr
    assert cluster.lines() == []


def test_slurm_dry_run_prints_the_commands_and_runs_nothing(tmp_path):
    cluster = Cluster(tmp_path)
    proc = cluster.submit("--dry-run", SLURM_ARRAY_TASK_ID="3",
                          SLURM_ARRAY_TASK_COUNT="4", SLURM_ARRAY_TASK_MIN="0",
                          SLURM_ARRAY_TASK_MAX="3")
    assert proc.returncode == 0, proc.stderr
    assert cluster.lines() == []
    out = proc.stdout
    assert "scontrol show hostnames 'node-[a-b]'" in out
    assert "W2S_NUM_PROCESSES=2" in out
    srun = out[out.index("srun --kill-on-bad-exit=1"):]
    assert "configs/nlp_aux.py /shared/r --config.seed=1 --shard=3/4" in srun
    assert "--dry-run" not in out
