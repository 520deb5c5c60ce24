"""Progress lines a person can watch: step, loss, examples/s, ETA."""
from __future__ import annotations

import sys
import time


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def log(message: str) -> None:
    print(message, file=sys.stdout, flush=True)


class Progress:
    """Rates exclude the first step, which includes jit compilation."""

    def __init__(self, name: str, total_steps: int, batch_size: int,
                 first_step: int = 1):
        """`first_step` > 1 when a run resumes: rates count this run only."""
        self.name, self.total, self.batch_size = name, total_steps, batch_size
        self.first = first_step
        self.start = time.perf_counter()
        self.after_first = None  # time when the first step of this run finished

    def update(self, step: int, loss: float | None = None) -> None:
        """Report finished step `step` (1-based, out of total_steps)."""
        now = time.perf_counter()
        head = f"[{self.name}] step {step}/{self.total}"
        if loss is not None:
            head += f" loss {loss:.4f}"
        if step == self.first:
            self.after_first = now
            log(f"{head} (first step incl. compile: {now - self.start:.1f}s)")
            return
        rate = (step - self.first) / (now - self.after_first)
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        log(f"{head} {rate * self.batch_size:.1f} ex/s "
            f"ETA {format_duration(eta)}")

    def elapsed(self) -> float:
        return time.perf_counter() - self.start
