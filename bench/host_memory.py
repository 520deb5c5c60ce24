"""Page faults and system time per gpt2-small train step, with and without
w2s_jax.core.host_memory.keep_freed_memory(), optionally with a PyTorch step
run in the same process between JAX steps (as bench/step_vs_torch.py does).

Prints one line per step: wall seconds, minor page faults, user and system
seconds (getrusage). `--keep-host-memory late` calls it only after JAX's
CPU client has started (threads that picked a malloc arena keep it).

  taskset -c 1 python bench/host_memory.py --keep-host-memory off --torch
  taskset -c 1 python bench/host_memory.py --keep-host-memory on --torch
"""
import argparse
import resource
import statistics
import time

import numpy as np


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--keep-host-memory", default="on", choices=("on", "off", "late"))
    p.add_argument("--torch", action="store_true",
                   help="a torch gpt2-small step before each JAX step")
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    from w2s_jax.core import host_memory
    if args.keep_host_memory == "on":
        print("keep_host_memory:", host_memory.keep_freed_memory())
    import step_profile
    import step_vs_torch
    if args.torch:
        import torch
        torch.set_num_threads(1)
    step_fn, state, data = step_profile.build("gpt2", 8, 128)
    if args.keep_host_memory == "late":
        print("keep_host_memory (late):", host_memory.keep_freed_memory())
    tstep = None
    if args.torch:
        class Args:
            dtype = "float32"
        hf = step_vs_torch.MODELS["gpt2"]
        rng = np.random.default_rng(0)
        ids = rng.integers(1, hf["vocab_size"], (8, 128)).astype(np.int32)
        tvars, _, _ = step_vs_torch.torch_variants(
            hf, Args, ids, rng.integers(0, 2, 8), False, "cpu")
        tstep = tvars["torch:step"]
    holder = {"state": state}

    def jstep():
        holder["state"], m = step_fn(holder["state"], data)
        m["loss"].block_until_ready()

    def measured(fn):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        fn()
        t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        return (t1 - t0, r1.ru_minflt - r0.ru_minflt, r1.ru_utime - r0.ru_utime,
                r1.ru_stime - r0.ru_stime)

    jstep()  # compiles
    if tstep:
        tstep()
    walls = []
    for _ in range(args.steps):
        if tstep:
            print("torch %.3f s, faults %d, user %.2f s, sys %.2f s" % measured(tstep),
                  flush=True)
        m = measured(jstep)
        walls.append(m[0])
        print("jax   %.3f s, faults %d, user %.2f s, sys %.2f s" % m, flush=True)
    print(f"jax median {statistics.median(walls):.3f} s")


if __name__ == "__main__":
    main()
