"""Meta-steps/s of metalearn's torch.func MAML (vmap over tasks) against a per-task autograd loop.

The loop is what learn2learn's ``MAML.clone()`` + ``adapt()`` does: for each task, one
``torch.autograd.grad`` per inner step (``create_graph=True`` for second order), then one backward
of the summed query losses. learn2learn itself cannot be installed here (0.2.0 fails to build on
Python 3.11), so the loop is written out below with the same model, data and optimizer.

Also measured: adaptation + prediction time for one task, and peak memory of one meta-step
against the number of inner steps (CUDA: max_memory_allocated; CPU: glibc heap held by the graph).

Usage:
    .venv/bin/python bench/meta_step.py --device auto
"""

from __future__ import annotations

import argparse
import ctypes
import json
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call

from metalearn.learn.learners import build_learner
from metalearn.learn.learners.maml import MAML
from metalearn.learn.learners.maml_functional import query_losses
from metalearn.learn.learners.neural import amp_autocast, resolve_device
from metalearn.learn.models import param_dict
from metalearn.learn.sampling import TaskBatch

N_FEATURES, HIDDEN = 132, (128, 128)


def make_batch(n_tasks: int, n_support: int, n_query: int, device: torch.device, seed: int = 0) -> TaskBatch:
    """Random regression episodes: x (T, n_support | n_query, 132), y (T, n_support | n_query)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_tasks, n_support + n_query, N_FEATURES, generator=g)
    y = torch.sin(x[..., :4].sum(-1)) + 0.1 * torch.randn(n_tasks, n_support + n_query, generator=g)
    ids = tuple(f"t{i}" for i in range(n_tasks))
    s, q = slice(None, n_support), slice(n_support, None)
    return TaskBatch(x[:, s], y[:, s], x[:, q], y[:, q], ids).to(device)


class LoopMAML:
    """Reference: plain Python loop over tasks with torch.autograd.grad, same net and AdamW as MAML."""

    def __init__(self, learner: MAML) -> None:
        self.model, self.optimizer, self.cfg = learner.model, learner.optimizer, learner.cfg

    def losses(self, batch: TaskBatch) -> torch.Tensor:
        """(T,) query losses after the inner loop, with the graph the outer backward needs."""
        params = dict(self.model.named_parameters())
        out = []
        for t in range(batch.n_tasks):
            fast = params
            for _ in range(self.cfg.inner_steps):
                loss = F.mse_loss(
                    functional_call(self.model, fast, (batch.x_support[t],)).squeeze(-1), batch.y_support[t]
                )
                grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not self.cfg.first_order)
                fast = {k: v - self.cfg.inner_lr * g for (k, v), g in zip(fast.items(), grads)}
            out.append(
                F.mse_loss(
                    functional_call(self.model, fast, (batch.x_query[t],)).squeeze(-1), batch.y_query[t]
                )
            )
        return torch.stack(out)

    def meta_train_step(self, batch: TaskBatch) -> dict[str, float]:
        loss = self.losses(batch).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.detach())}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(
    step: Callable[[TaskBatch], dict], batch: TaskBatch, device: torch.device, n: int
) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) for n meta-steps."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        step(batch)
    sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def build(
    args: argparse.Namespace, first_order: bool, compile_: bool = False, steps: int | None = None
) -> MAML:
    return build_learner(
        "fomaml" if first_order else "maml",
        N_FEATURES,
        "regression",
        hidden=HIDDEN,
        device=args.device,
        inner_steps=args.inner_steps if steps is None else steps,
        compile=compile_,
        amp=args.amp,
    )


def vmap_losses(learner: MAML) -> Callable[[TaskBatch], torch.Tensor]:
    """(T,) query losses through metalearn's vmapped path, with the graph the outer backward needs."""

    def losses(batch: TaskBatch) -> torch.Tensor:
        cfg = learner.cfg
        with amp_autocast(learner.device, cfg.amp):
            return query_losses(
                learner.model, param_dict(learner.model), learner.lrs,
                batch.x_support, batch.y_support, batch.x_query, batch.y_query,
                task_type="regression", steps=cfg.inner_steps, first_order=cfg.first_order,
            )

    return losses


def throughput(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Steps/s per variant: warm up each (compilation happens there), then interleaved rounds, best round.

    Why interleaved best-of-rounds: the CPUs are shared, and a burst of load elsewhere should not
    land on one variant only; the best round is the least disturbed (as ``timeit`` takes the min).
    The CPU-time rate (process_time) is the contention-proof figure when --threads is 1.
    """
    batch = make_batch(args.tasks, args.n_support, args.n_query, device)
    rows = []
    for first_order in (False, True):
        order = "first" if first_order else "second"
        variants = {
            "per-task loop (autograd.grad)": LoopMAML(build(args, first_order)).meta_train_step,
            "metalearn vmap (torch.func)": build(args, first_order).meta_train_step,
        }
        if not args.no_compile:
            variants["metalearn vmap + torch.compile"] = build(
                args, first_order, compile_=True
            ).meta_train_step
        warm = {label: timed(step, batch, device, 3)[0] for label, step in variants.items()}
        per_round = {
            label: max(1, round(args.seconds / args.rounds / timed(step, batch, device, 1)[1]))
            for label, step in variants.items()
        }
        wall = {label: 0.0 for label in variants}
        cpu = {label: 0.0 for label in variants}
        for _ in range(args.rounds):
            for label, step in variants.items():
                n = per_round[label]
                w, c = timed(step, batch, device, n)
                wall[label], cpu[label] = max(wall[label], n / w), max(cpu[label], n / c)
        base = "per-task loop (autograd.grad)"
        for label in variants:
            row = {
                "order": order,
                "variant": label,
                "steps_s": wall[label],
                "ratio": wall[label] / wall[base],
                "cpu_steps_s": cpu[label],
                "cpu_ratio": cpu[label] / cpu[base],
                "warmup_s": warm[label],
            }
            rows.append(row)
            print(
                f"| {order:6s} | {label:32s} | {row['steps_s']:8.1f} | x{row['ratio']:5.2f} "
                f"| {row['cpu_steps_s']:8.1f} | x{row['cpu_ratio']:5.2f} | {row['warmup_s']:6.1f} |",
                flush=True,
            )
    return rows


def adapt_latency(args: argparse.Namespace, device: torch.device) -> dict:
    """Seconds for adapt (inner_steps on one n_support-shot support set) + predict on its query rows."""
    learner = build(args, first_order=False)
    batch = make_batch(1, args.n_support, args.n_query, device, seed=1)
    times = []
    for _ in range(11):
        t0 = time.perf_counter()
        learner.predict(learner.adapt(batch.x_support[0], batch.y_support[0]), batch.x_query[0])
        sync(device)
        times.append(time.perf_counter() - t0)
    return {"first_s": times[0], "median_s": sorted(times[1:])[5]}


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def live_heap_bytes() -> int:
    """Bytes currently malloc'ed in all glibc arenas, mmapped blocks included (torch's CPU allocator uses malloc).

    Why not tracemalloc: it only sees Python's allocator, not tensor storage.
    """
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def step_memory_mib(
    losses: Callable[[TaskBatch], torch.Tensor], batch: TaskBatch, device: torch.device
) -> float:
    """MiB a meta-step needs beyond the model: CUDA peak of forward + backward; CPU live heap after the forward.

    On CPU the forward's end is the peak in practice: the autograd graph of all inner steps is alive
    there, and backward frees it as it goes.
    """
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        losses(batch).mean().backward()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    before = live_heap_bytes()
    loss = losses(batch).mean()
    held = live_heap_bytes() - before
    loss.backward()
    return held / 2**20


def memory_table(args: argparse.Namespace, device: torch.device) -> list[dict]:
    batch = make_batch(args.tasks, args.n_support, args.n_query, device)
    rows = []
    for steps in (1, 5, 10, 20):
        row: dict = {"inner_steps": steps}
        for variant in ("loop", "maml", "fomaml"):
            learner = build(args, first_order=variant == "fomaml", steps=steps)
            losses = LoopMAML(learner).losses if variant == "loop" else vmap_losses(learner)
            step_memory_mib(losses, batch, device)  # warm-up: first-call allocations are not the step's
            row[variant] = min(step_memory_mib(losses, batch, device) for _ in range(2))
        rows.append(row)
        print(
            f"  inner_steps={steps:2d}  loop (2nd order) {row['loop']:7.1f} MiB   maml (2nd) {row['maml']:7.1f} MiB"
            f"   fomaml {row['fomaml']:7.1f} MiB",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--n-support", type=int, default=10)
    parser.add_argument("--n-query", type=int, default=20)
    parser.add_argument("--inner-steps", type=int, default=5)
    parser.add_argument(
        "--seconds", type=float, default=4.0, help="timed seconds per variant, over all rounds"
    )
    # One thread by default: on shared cores, OpenMP threads that lose their core spin and collapse
    # throughput (seen here: 2 threads under load ran 10x slower than 1).
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA only)")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (best one counts)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    try:
        import learn2learn  # noqa: F401

        l2l = "learn2learn is installed but not benchmarked here"
    except ImportError:
        l2l = "learn2learn: not installed (0.2.0 fails to build on Python 3.11: longintrepr.h); the loop is its algorithm"
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}; {l2l}")
    print(
        f"MLP {N_FEATURES}-{'-'.join(map(str, HIDDEN))}-1, {args.tasks} tasks, "
        f"{args.n_support}-shot/{args.n_query}-query, "
        f"{args.inner_steps} inner steps; AdamW outer step included\n\nmeta-steps/s (ratio to the per-task loop):\n"
    )
    print("| order  | variant                          | wall/s   | ratio  | CPU/s    | ratio  | warm-up s |")
    print("|--------|----------------------------------|----------|--------|----------|--------|-----------|")
    results = {"throughput": throughput(args, device)}
    results["adapt"] = adapt_latency(args, device)
    a = results["adapt"]
    print(
        f"\nadapt ({args.inner_steps} steps, {args.n_support}-shot) + predict ({args.n_query} rows): "
        f"median {1e3 * a['median_s']:.1f} ms, first call {1e3 * a['first_s']:.1f} ms"
    )
    if not args.no_memory:
        how = (
            "torch.cuda.max_memory_allocated"
            if device.type == "cuda"
            else "glibc heap held at end of forward"
        )
        print(f"\nmemory of one eager meta-step (autograd path) vs inner steps ({how}):")
        results["memory_mib"] = memory_table(args, device)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
