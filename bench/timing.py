"""Wall-clock timing shared by the benchmarks (imported as a sibling module:
the scripts run as `python bench/NAME.py`, which puts bench/ on sys.path)."""
import statistics
import time


def step_times(fn, reps: int, warmup: int = 0) -> list[float]:
    """Seconds per call of `fn` over `reps` calls, after `warmup` untimed ones
    (the first calls include compilation and allocator warm-up)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_time(fn, reps: int, warmup: int = 0) -> float:
    return statistics.median(step_times(fn, reps, warmup))


def peak_rss_mib() -> float:
    """VmHWM of this process (the resident-set high-water mark), MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def alternate_steps(runs: dict, rounds: int, steps: int
                    ) -> tuple[dict[str, float], dict[str, float]]:
    """Train steps compared under the same machine load: `runs` maps a name
    to [compiled step, state, batch]; each takes 3 untimed steps, then all
    take `steps` steps in turn, `rounds` times. Returns (median seconds a
    step, loss after the 3 untimed steps) by name."""
    losses = {}
    for name, run in runs.items():
        for _ in range(3):
            run[1], metrics = run[0](run[1], run[2])
        losses[name] = float(metrics["loss"])
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            for _ in range(steps):
                run[1], metrics = run[0](run[1], run[2])
            float(metrics["loss"])
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(t) for name, t in times.items()}, losses
