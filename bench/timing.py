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
