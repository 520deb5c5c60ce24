"""The training and prediction loops around the jitted steps of train.py."""
from __future__ import annotations

import contextlib
import time
import weakref
from typing import Any, Callable

import jax
import numpy as np

from w2s_jax.core import (checkpoint, distributed, host_memory,
                          metric_writers, sharding)
from w2s_jax.core.errors import UsageError
from w2s_jax.train import losses
from w2s_jax.data import batching, packing
from w2s_jax.core.progress import Progress, log
from w2s_jax.train.steps import (TrainSettings, init_state, join_trainable,
                                 learning_rate, make_optimizer,
                                 make_train_step)


def token_inputs(ids: list[np.ndarray], *, pad_id: int, max_ctx: int,
                 packable: bool = False):
    """make_inputs(indices, rows, rungs) -> (input_ids, attention_mask),
    right-padded to the rung (batching.padded_length) of the longest.
    `packable` (for a Classifier's forward, which takes packed rows) adds
    make_inputs.pack(indices, rows, length, placed=None) -> packing.pack's
    inputs, and finetune trains packed (TrainSettings.pack)."""
    def make_inputs(indices, rows, rungs=None):
        return batching.pad(ids, indices, rows=rows, max_ctx=max_ctx,
                            pad_id=pad_id, rungs=rungs)

    def pack(indices, rows, length, placed=None):
        return packing.pack(ids, indices, rows=rows, length=length,
                            pad_id=pad_id, placed=placed)
    if packable:
        make_inputs.pack = pack
    return make_inputs


def predict(predict_step, params, *, make_inputs, lengths: np.ndarray,
            batch_size: int, max_ctx: int, mesh, num_classes: int,
            rungs: tuple[int, ...] | None = None,
            packed: packing.EvalPacking | None = None) -> np.ndarray:
    """Class probabilities [N, K] in the original example order, from
    length-sorted batches padded to `rungs` (default: fitted to these
    batches, batching.fit_rungs; a step that predicts several sets takes
    batching.eval_rungs of all of them, so it compiles fewer shapes).
    With `packed` (and make_inputs.pack), several examples share a row
    instead (_predict_packed).

    After a call that compiled (a batch shape new to `predict_step`), and at
    the end of a pass that compiled, free host memory is given back
    (host_memory.give_back_free_memory); an evaluation during training,
    on shapes compiled before, gives nothing back, so the train step's
    kept buffers stay."""
    if packed is not None:
        return _predict_packed(predict_step, params, pack=make_inputs.pack,
                               lengths=lengths, mesh=mesh,
                               num_classes=num_classes, plan=packed)
    probs = np.zeros((len(lengths), num_classes), np.float32)
    positions = distributed.process_rows(mesh, batch_size)
    compiled = False
    batches = batching.eval_batches(lengths, batch_size=batch_size)
    if rungs is None:
        rungs = batching.fit_rungs(lengths, batches, max_ctx)
    for indices in batches:
        inputs = sharding.to_global(
            mesh, _process_inputs(make_inputs, lengths, indices, positions,
                                  rungs),
            global_rows=batch_size)
        # The output is replicated, so every process can read all of it.
        out = np.asarray(predict_step(params, inputs))
        probs[indices] = out[:len(indices)]
        compiled |= _after_new_shape(predict_step, inputs)
    if compiled:
        host_memory.give_back_free_memory()
    return probs


def _predict_packed(predict_step, params, *, pack, lengths: np.ndarray, mesh,
                    num_classes: int, plan: packing.EvalPacking) -> np.ndarray:
    """predict, on packed rows (packing.eval_batches): the e2e benchmark's
    length-sorted eval batches padded to fitted lengths were 28% padding,
    packed 0.7% (bench/RESULTS.md 4i).

    Each row's examples are numbered from 1 within the row and pooled
    there (classifier.pool_row_segments), so a mesh that splits the rows
    never moves hidden states between devices (pooled by example, XLA
    gathers them across devices, and several processes then got other
    float roundings than one). Every process packs the whole batch the same
    way; the outputs of empty slots are dropped."""
    if len(lengths) and lengths.max() > plan.length:
        raise ValueError(f"an example of {lengths.max()} tokens does not fit "
                         f"the plan's rows of {plan.length}")
    probs = np.zeros((len(lengths), num_classes), np.float32)
    compiled = False
    for rows in packing.eval_batches(lengths, length=plan.length,
                                     rows=max(plan.rows)):
        members = np.array([i for row in rows for i in row])
        sizes = [len(row) for row in rows]
        if max(sizes) > plan.slots:
            raise ValueError(f"a row of {max(sizes)} examples exceeds the "
                             f"plan's {plan.slots} slots: a set the plan "
                             f"was not made for (packing.eval_plan)")
        inputs = sharding.to_global(mesh, packed_eval_inputs(
            pack, rows, next(r for r in plan.rows if r >= len(rows)),
            plan.length, plan.slots))
        out = np.asarray(predict_step(params, inputs))
        probs[members] = np.concatenate(
            [out[r, :size] for r, size in enumerate(sizes)])
        compiled |= _after_new_shape(predict_step, inputs)
    if compiled:
        host_memory.give_back_free_memory()
    return probs


def packed_eval_inputs(pack, rows: list[list[int]], n_rows: int,
                       length: int, slots: int) -> tuple:
    """(ids, segments, slots) of one packed prediction batch: `rows`
    (example indices a row, packing.eval_batches') packed by `pack` into
    `n_rows` rows of `length` tokens, each row's examples numbered from 1
    within the row, in its segments and in its `slots` slot numbers."""
    sizes = [len(row) for row in rows]
    starts = np.cumsum([0] + sizes)
    ids, segments, _ = pack(
        np.array([i for row in rows for i in row]), n_rows, length,
        placed=[list(range(a, b)) for a, b in zip(starts[:-1], starts[1:])])
    # pack numbers segments 1..E in row order: row r's from starts[r]+1.
    first = np.zeros(len(segments), np.int64)
    first[:len(rows)] = starts[:-1]
    segments = np.where(segments > 0, segments - first[:, None], 0)
    slot_ids = np.zeros((len(segments), slots), np.int32)
    for r, size in enumerate(sizes):
        slot_ids[r, :size] = np.arange(1, size + 1)
    return ids, segments.astype(np.int32), slot_ids


# The input shapes each jitted step has been called with (so compiled for).
_SHAPES_SEEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _after_new_shape(step_fn, inputs) -> bool:
    """After `step_fn` first meets an input shape (its compile: ahead of
    the steps, or at the first call), give the compiler's freed memory back
    (host_memory.give_back_free_memory); True if the shape was new."""
    seen = _shapes_seen(step_fn)
    shape = _shape_key(inputs)
    if seen is None or shape in seen:
        return False
    seen.add(shape)
    host_memory.give_back_free_memory()
    return True


def _compile_ahead(name, step_fn, state, frozen, host_batch, global_batch,
                   positions, shape_of) -> None:
    """Compile `step_fn` for every input shape of the batches at
    `positions` (host_batch(position) builds one, shape_of(position) names
    its shape cheaply) before the first step, giving the compiler's memory
    back after each.

    A compile's transient host memory (LLVM's, about 300 MB for a MiniLM-L6
    step) otherwise lands whenever a batch of a new length first comes up,
    late in a stage for rare lengths, on top of the running steps' buffers
    and the heap they fragmented: the process's peak (bench/RESULTS.md 4e).
    Here the compiles run while nothing else is live. jit reuses the
    executables compiled here (the same lowering; with JAX's profile-guided
    mode, JAX_ENABLE_PGLE, it would compile again), so nothing is compiled
    twice."""
    seen = _shapes_seen(step_fn)
    if seen is None or not hasattr(step_fn, "lower"):  # not jitted
        return
    compiled, started, shapes = 0, time.perf_counter(), set()
    for position in positions:
        if shape_of(position) in shapes:
            continue
        shapes.add(shape_of(position))
        batch = host_batch(position)
        if _shape_key(batch["inputs"]) in seen:
            continue
        step_fn.lower(state, global_batch(batch), *frozen).compile()
        compiled += _after_new_shape(step_fn, batch["inputs"])
    seconds = time.perf_counter() - started
    if compiled and seconds >= 1.0:  # a wait worth explaining
        log(f"[{name}] compiled the train step for {compiled} batch "
            f"shape(s) in {seconds:.1f}s")


def _shapes_seen(step_fn) -> set | None:
    """The shapes `step_fn` has compiled for; None if it cannot be weakly
    referenced (its compiles are then unknown)."""
    try:
        return _SHAPES_SEEN.setdefault(step_fn, set())
    except TypeError:
        return None


def _shape_key(inputs) -> tuple:
    return tuple(x.shape for x in jax.tree.leaves(inputs))


def minibatch_rows(settings: TrainSettings, rungs: tuple[int, ...]) -> dict:
    """{padded length: rows per minibatch} for a stage's rungs.

    `settings.minibatch_size` rows is what fits at the longest rung; with
    `settings.minibatch_by_tokens` a shorter batch takes the most rows (a
    divisor of the batch, a multiple of minibatch_size) within the same
    token count, so fewer, larger minibatches per step: their matmuls are
    wider and the per-minibatch costs (the embedding gradient's zero fill
    and sum, the confidence loss's extra forward pass over the whole batch,
    which a single minibatch does not need) are paid fewer times. Memory
    stays that of the longest rung's minibatch. Without it every batch
    takes minibatch_size rows.
    """
    size = settings.minibatch_size
    if not settings.minibatch_by_tokens or not rungs:
        return {r: size for r in rungs}
    budget = size * max(rungs)  # 0 for features: the whole batch fits
    fits = _minibatch_sizes(settings)
    return {length: max(r for r in fits if r * length <= budget)
            for length in rungs}


def _minibatch_sizes(settings: TrainSettings) -> list[int]:
    """The rows a minibatch may take: divisors of the batch that are
    multiples of minibatch_size."""
    size, batch = settings.minibatch_size, settings.batch_size
    return [r for r in range(size, batch + 1, size) if batch % r == 0]


def _process_inputs(make_inputs, lengths, indices, positions, rungs):
    """This process's rows (`positions`) of the batch of `indices`, filler
    rows past the last index included, padded to one of `rungs`.

    The padded length of a batch follows its longest example, so that
    example is built first and then dropped: every process pads its rows to
    the same length as the whole batch.
    """
    mine = indices[positions[positions < len(indices)]]
    longest = indices[np.argmax(lengths[indices])]
    inputs = make_inputs(np.concatenate([[longest], mine]), len(positions) + 1,
                         rungs)
    return jax.tree.map(lambda x: x[1:], inputs)


def _padded_batches(name, make_inputs, lengths, all_batches, train_targets,
                    settings, mesh, rungs):
    """(host_batch, shape_of, global_batch, waste) for batches of one
    example per row, right-padded to `rungs`, in minibatches of
    minibatch_rows rows; host_batch(i) holds this process's rows of
    all_batches[i], which global_batch puts on the mesh; waste(span) is
    the padding fraction of all_batches[span]."""
    rows_at = minibatch_rows(settings, rungs)
    if max(rungs) > 0:  # not features, which have no tokens
        line = f"[{name}] batches padded to {', '.join(map(str, rungs))} tokens"
        if len(set(rows_at.values())) > 1:
            line += (f", in minibatches of "
                     f"{', '.join(str(rows_at[r]) for r in rungs)} rows")
        log(line)

    def shape_of(i):  # a batch's shape follows its longest example
        return batching.padded_length(int(lengths[all_batches[i]].max()),
                                      settings.max_ctx, rungs)

    def host_batch(i):
        indices, rows = all_batches[i], rows_at[shape_of(i)]
        # This process's rows of each minibatch, as flat positions in the batch.
        mine = distributed.process_rows(mesh, rows)
        positions = np.add.outer(
            np.arange(settings.batch_size // rows) * rows, mine).ravel()
        return jax.tree.map(lambda x: x.reshape(-1, len(mine), *x.shape[1:]), {
            "inputs": _process_inputs(make_inputs, lengths, indices, positions,
                                      rungs),
            "targets": train_targets[indices[positions]]})

    # Every minibatch size splits over the processes in the same proportion.
    processes_share = (settings.minibatch_size //
                       len(distributed.process_rows(mesh, settings.minibatch_size)))

    def global_batch(batch):
        return sharding.to_global(
            mesh, batch, 1,
            global_rows=batch["targets"].shape[1] * processes_share)

    def waste(span):
        return batching.padding_waste(lengths, all_batches[span],
                                      settings.max_ctx, rungs)
    return host_batch, shape_of, global_batch, waste


# Batch shapes (programs) a packed stage compiles, at least one per number
# of minibatches: on sst2's MiniLM batches, 4 pad within 0.1% of the rows
# that a shape per batch would (bench/RESULTS.md 4g).
PACKED_SHAPES = 4
# A shape is compiled only if it saves more padded token slots a device
# over the stage than this. On one Zen 3 core a MiniLM train-step shape
# compiles in 4.5-7 s (about 3 s loaded from the compilation cache), while
# a padded row of 64 tokens costs 35-60 ms a step: about 64 such rows pay
# for a cached shape (bench/RESULTS.md 4k). Both grow with the model.
PACKED_SHAPE_TOKENS = 4096


def _packed_batches(name, pack, lengths, all_batches, train_targets,
                    settings, mesh, row_length):
    """(host_batch, shape_of, global_batch, waste), as
    _padded_batches, for batches packed several examples to a row
    (data/packing.py) in rows of `row_length` tokens, at most
    minibatch_size rows per minibatch. Every process packs the whole batch
    the same way, and global_batch hands the mesh its own rows and
    examples."""
    shards = sharding.batch_size_divisor(mesh)
    layouts = packing.plan(
        lengths, all_batches, row_length=row_length,
        max_rows=settings.minibatch_size,
        group_sizes=_minibatch_sizes(settings), quantum=shards,
        shapes=PACKED_SHAPES,
        shape_cost=PACKED_SHAPE_TOKENS / row_length * shards)
    log(f"[{name}] batches packed into rows of {row_length} tokens, as "
        + ", ".join(f"{m} x {rows}" for m, rows in
                    sorted({(len(p.groups), p.rows) for p in layouts}))
        + " (minibatches x rows)")

    def shape_of(i):
        return len(layouts[i].groups), layouts[i].rows

    def host_batch(i):
        indices, layout = all_batches[i], layouts[i]
        parts = [pack(indices[g], layout.rows, row_length)
                 for g in layout.groups]
        order = indices[np.concatenate(layout.groups)]
        targets = train_targets[order]
        return {"inputs": tuple(np.stack(x) for x in zip(*parts)),
                "targets": targets.reshape(len(layout.groups), -1,
                                           *targets.shape[1:])}

    def waste(span):
        return packing.waste(lengths, all_batches[span], layouts[span],
                             row_length)

    def global_batch(batch):
        (ids, segments, example_segments), targets = (batch["inputs"],
                                                      batch["targets"])
        rows = distributed.process_rows(mesh, ids.shape[1])
        examples = distributed.process_rows(mesh, targets.shape[1])
        mine = {"inputs": (ids[:, rows], segments[:, rows],
                           example_segments[:, examples]),
                "targets": targets[:, examples]}
        split = sharding.batch_sharding(mesh, 1)
        return jax.tree.map(
            lambda x, whole: jax.make_array_from_process_local_data(
                split, x, whole.shape), mine, batch)
    return host_batch, shape_of, global_batch, waste


def finetune(*, name: str, forward: Callable, params, make_inputs,
             lengths: np.ndarray, train_targets: np.ndarray,
             settings: TrainSettings, loss: losses.Loss, loss_params: dict,
             mesh, seed: int, checkpoint_dir: str | None = None,
             checkpoint_every: int = 0, eval_every: int = 0,
             on_eval: Callable[[int, Any], dict | None] | None = None,
             writer: metric_writers.MetricWriter | None = None,
             trainable: Callable[[tuple], bool] | None = None
             ) -> tuple[Any, dict]:
    """Train on (inputs, soft targets); returns the final params and a record.

    `make_inputs(indices, rows, rungs)` builds the numpy inputs of a batch,
    padded to one of `rungs` (batching.padded_length); with
    `settings.pack`, batches are random and packed by make_inputs.pack
    (token_inputs(packable=True), data/packing.py);
    `lengths` (tokens per example) groups similar lengths into batches
    (unpacked) and sizes the packed rows.
    With `checkpoint_dir`, training resumes from the latest checkpoint there
    and saves one every `checkpoint_every` steps (0: never) and on SIGTERM,
    after which it raises checkpoint.Preempted.
    `on_eval(step, params)`, the evaluation hook, runs after every
    `eval_every`-th step and after the last one (early stopping); the
    {name: value} it may return go to `writer` as `eval/<name>`, as do
    `train/loss` and `train/examples_per_s` at every progress line.
    `trainable(path)` (None: every parameter) picks the parameters that
    train, e.g. LoRA's adapters and the head; the others stay frozen, get
    no gradients or optimizer state, and are not in the checkpoints.
    """
    n_examples = len(lengths)
    steps_per_epoch = n_examples // settings.batch_size
    if steps_per_epoch == 0:
        raise UsageError(f"[{name}] {n_examples} training examples are "
                         f"fewer than one batch of config.train.batch_size="
                         f"{settings.batch_size}; raise config.n_train or "
                         f"lower config.train.batch_size")
    total_steps = steps_per_epoch * settings.epochs
    n_micro = settings.batch_size // settings.minibatch_size
    tx = make_optimizer(settings)
    state = init_state(tx, params, mesh, trainable, total_steps=total_steps)
    frozen = state.pop("frozen", None)
    step_fn = make_train_step(
        forward, tx, loss, loss_params, mesh,
        param_shardings=sharding.shardings_of(state["params"]),
        frozen_shardings=(None if frozen is None
                          else sharding.shardings_of(frozen)))
    # With minibatches by tokens, this split is the longest batches'.
    log(f"[{name}] {n_examples} examples, {settings.epochs} epochs, "
        f"{total_steps} steps of {settings.batch_size} "
        f"({n_micro} x {settings.minibatch_size}), lr {settings.lr:g}, "
        f"loss {loss.name}")

    ckpt = (checkpoint.StageCheckpoints(checkpoint_dir, checkpoint_every)
            if checkpoint_dir else None)
    try:
        start, losses_seen, seconds_before = 0, [], 0.0
        restored = ckpt.restore(_progress_of(state)) if ckpt else None
        if restored is not None:
            saved, position = restored
            state = {**state, **saved}
            start = int(state["step"])
            epoch, batch = position["epoch"], position["batch"]
            if epoch * steps_per_epoch + batch != start:
                raise ValueError(f"[{name}] checkpoint in {checkpoint_dir} is "
                                 f"at step {start} but at batch {batch} of "
                                 f"epoch {epoch} ({steps_per_epoch} batches "
                                 f"each); delete it to start over")
            losses_seen = position["losses"]
            seconds_before = position["train_seconds"]
            log(f"[{name}] resuming from step {start}")
        # Without checkpoints there is nothing to save: SIGTERM just kills.
        watch = (checkpoint.sigterm_watch() if ckpt else
                 contextlib.nullcontext(lambda step: False))
        with watch as stop:
            state, waste, seconds = _train(
                name, state, step_fn, make_inputs=make_inputs, lengths=lengths,
                train_targets=train_targets, settings=settings, mesh=mesh,
                seed=seed, total_steps=total_steps, start=start,
                losses_seen=losses_seen, seconds_before=seconds_before,
                ckpt=ckpt, stop=stop, eval_every=eval_every, on_eval=on_eval,
                writer=writer or metric_writers.MetricWriter(),
                frozen=() if frozen is None else (frozen,))
    finally:
        if ckpt:
            ckpt.close()
    record = {"steps": total_steps, "examples": n_examples,
              "final_loss": losses_seen[-1],
              "train_seconds": seconds_before + seconds,
              "resumed_from_step": start,
              "padding_waste": float(np.mean(waste)),
              "loss_curve": losses_seen}
    return join_trainable(state["params"], frozen), record


def _progress_of(state) -> dict:
    """What a checkpoint holds of the train state: all but its length,
    which the stage's settings give (so checkpoints written before the
    length was state restore too)."""
    return {k: v for k, v in state.items() if k != "total_steps"}


def _train(name, state, step_fn, *, make_inputs, lengths, train_targets,
           settings, mesh, seed, total_steps, start, losses_seen,
           seconds_before, ckpt, stop, eval_every, on_eval, writer, frozen):
    """Run steps start+1..total_steps, appending their losses to
    `losses_seen`; returns the state, each epoch's padding waste, and the
    seconds this call took."""
    steps_per_epoch = total_steps // settings.epochs
    # Counted from the resumed step, so rates and ETAs cover this run only.
    progress = Progress(name, total_steps, settings.batch_size,
                        first_step=start + 1)
    last_line = None  # (step, time) of the previous progress line

    def record(pending):
        nonlocal last_line
        step, metrics = pending
        value = float(metrics["loss"])
        if not np.isfinite(value):
            raise FloatingPointError(f"[{name}] non-finite loss {value} "
                                     f"at step {step}")
        losses_seen.append(value)
        if (step == start + 1 or step % settings.log_every == 0
                or step == total_steps):
            progress.update(step, value)
            scalars, now = {"train/loss": value}, time.perf_counter()
            # The backbone's rate as optax applied it at this step (optax
            # counts from 0); a separate head_lr follows the same schedule.
            scalars["train/lr"] = float(learning_rate(
                settings, step - 1, total_steps, settings.lr))
            # Throughput since the previous line; the first includes compiling.
            if last_line is not None:
                scalars["train/examples_per_s"] = (
                    (step - last_line[0]) * settings.batch_size
                    / (now - last_line[1]))
            last_line = (step, now)
            writer.scalars(step, scalars)

    # Packed, batches are drawn at random (the paper's way); padded, they
    # are grouped by length. Which one is settings.pack's to say: the batches
    # are part of what a stage's key names.
    pack = getattr(make_inputs, "pack", None)
    if settings.pack and pack is None:
        raise ValueError(f"[{name}] settings.pack is on but these inputs "
                         f"cannot be packed (loop.token_inputs(packable=True) "
                         f"can); set pack=False")
    epochs = [batching.train_batches(lengths, batch_size=settings.batch_size,
                                     rng=np.random.default_rng([seed, epoch]),
                                     by_length=not settings.pack)
              for epoch in range(settings.epochs)]
    all_batches = [b for batches in epochs for b in batches]
    # Fitted to every epoch's batches, not only those after a resume, so a
    # resumed stage pads exactly as the uninterrupted one.
    rungs = batching.fit_rungs(lengths, all_batches, settings.max_ctx)

    if settings.pack:
        host_batch, shape_of, global_batch, waste_of = _packed_batches(
            name, pack, lengths, all_batches, train_targets, settings, mesh,
            row_length=max(rungs))
    else:
        host_batch, shape_of, global_batch, waste_of = _padded_batches(
            name, make_inputs, lengths, all_batches, train_targets, settings,
            mesh, rungs)

    # Steps are numbered from 1 across epochs: those after `start` remain.
    _compile_ahead(name, step_fn, state, frozen, host_batch, global_batch,
                   range(start, len(all_batches)), shape_of)
    waste, pending = [], None
    for epoch, batches in enumerate(epochs):
        waste.append(waste_of(slice(epoch * steps_per_epoch,
                                    (epoch + 1) * steps_per_epoch)))
        for index, indices in enumerate(batches):
            step = epoch * steps_per_epoch + index + 1
            if step <= start:
                continue
            batch = host_batch(step - 1)
            state, metrics = step_fn(state, global_batch(batch), *frozen)
            _after_new_shape(step_fn, batch["inputs"])
            # Read the previous step's loss only now, so the host never
            # waits on the device between dispatches.
            if pending is not None:
                record(pending)
            pending = (step, metrics)
            if on_eval is not None and (step % eval_every == 0
                                        or step == total_steps):
                scores = on_eval(step, join_trainable(state["params"], *frozen))
                if scores:
                    writer.scalars(step, {f"eval/{k}": v
                                          for k, v in scores.items()})
            stopping = stop(step)
            if stopping or (ckpt and ckpt.due(step) and step < total_steps):
                record(pending)
                pending = None
                # A copy of the losses: the save may serialise them later.
                ckpt.save(step, _progress_of(state), {
                    "epoch": step // steps_per_epoch,
                    "batch": step % steps_per_epoch,
                    "losses": list(losses_seen),
                    "train_seconds": seconds_before + progress.elapsed()})
            if stopping:
                ckpt.wait()
                raise checkpoint.Preempted(
                    f"[{name}] stopped by SIGTERM after step {step}; "
                    f"checkpoint saved, rerun the same command to resume")
    if pending is not None:
        record(pending)
    host_memory.give_back_free_memory()
    return state, waste, progress.elapsed()
