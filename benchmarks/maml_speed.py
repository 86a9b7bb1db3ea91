"""Time and peak memory of one MAML meta-iteration on Conv4: metalib's paths against `higher`.

    .venv/bin/python benchmarks/maml_speed.py [--rounds 5] [--batches 16 32] [--steps 1 5]
        [--orders second first] [--paths higher plain plain-bn default vmap] [--no-memory]
        [--no-check] [--no-ablation] [--no-profile] [--out FILE]

The peer library is ``higher`` 0.2.1 (Grefenstette et al., 2019), a benchmark-only dependency:
``pip install higher==0.2.1 --no-deps`` (pure Python; ``make bench`` installs it). Leave it out
of ``--paths`` to run without it.

Conv4 (64 channels, 28 x 28 random images), 5-way 1-shot, 15 queries per class, inner lr 0.4.
One meta-iteration is ``metalib.maml.meta_gradient`` over the meta-batch (the optimizer step
adds well under a millisecond). The paths:

* ``higher``: the MAML loop of higher's own example (``higher.innerloop_ctx`` with a
  differentiable SGD, one task at a time, ``backward`` per task) on the same Conv4 with
  ``nn.BatchNorm2d(track_running_stats=False)``, the network that example builds (batch
  statistics, PyTorch's fused kernel). First order: the same loop with the inner gradients
  detached by ``grad_callback`` (higher has no first-order switch; ``track_higher_grads=False``
  would cut the path to the initial weights).
* ``plain``: the per-task loop as first written, the baseline of every ratio: the batch norm's
  variance from ``x.var`` (``OriginalBatchNorm`` below), default memory layout
  (``MAMLConfig(vectorise=False, fast_loop=False)``).
* ``plain-bn``: the same loop with today's plain-operation batch norm (centred, then the mean
  square).
* ``default``: ``MAMLConfig()`` as the chapters use it; on a CPU the fast loop: the support
  steps of 8 tasks at a time under ``vmap``, then each task's queries in channels-last memory
  with the fused batch-norm kernel.
* ``vmap``: ``vectorise=True``, every task at once under ``torch.func.vmap``.

Times are medians over ``--rounds`` interleaved rounds after a warm-up round; a ratio is the
median of the per-round ratios higher / path (and plain / path), so both sides ran under the
same load. Peak memory
is the peak RSS increase during one meta-iteration after a warm-up, each variant in a fresh
process (a GPU: its allocator's peak, runtime.device_peak_mb). FLOPs: ``FlopCounterMode`` on one
meta-iteration. The gradient check compares every path with the plain loop task by task, in
float64 and in float32. The ablation times each candidate speed-up alone (meta-batch 16, one
inner step) and one thread against two; the profiles list the ops that dominate before and
after. Prints Markdown and writes it to benchmarks/results/maml_speed.md. A smoke test:
``--rounds 1 --batches 2 --steps 1 --orders second --no-memory --no-ablation --out
/tmp/maml_speed.md``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when OpenMP starts
os.environ.setdefault("METALIB_THREADS", "2")

import argparse  # noqa: E402
import copy  # noqa: E402
import functools  # noqa: E402
import gc  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.func import grad  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from metalib.maml import MAMLConfig, meta_gradient  # noqa: E402
from metalib.nets import BatchStatNorm2d, Conv4, forward_with, with_batch_norm_kernel  # noqa: E402
from metalib.runtime import (  # noqa: E402
    device,
    device_peak_mb,
    progress,
    seed_everything,
    set_threads,
    synchronize,
)
from metalib.tasks import Episode  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "maml_speed.md"
N_WAY, QUERIES, INNER_LR = 5, 15, 0.4
PATHS = ("higher", "plain", "plain-bn", "default", "vmap")
HIGHER = "higher==0.2.1"
ORDERS = ("second", "first")
PLAIN = "plain loop (x.var BN)"
LABELS = {
    "higher": "higher 0.2.1",
    "plain": PLAIN,
    "plain-bn": "plain loop (centred BN)",
    "default": "default",
    "vmap": "vmap",
}


class OriginalBatchNorm(BatchStatNorm2d):
    """``BatchStatNorm2d.forward`` as first written (four passes; ``x.var`` is slow on a CPU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = x.var(dim=(0, 2, 3), keepdim=True, correction=0)
        x = (x - mean) * torch.rsqrt(var + self.eps)
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


@dataclass(frozen=True)
class HigherConfig:
    """What the ``higher`` loop needs of a MAMLConfig (it takes no params dict: the module's own
    parameters are the initial weights, ``copy_initial_weights=False``)."""

    inner_steps: int
    inner_lr: float
    first_order: bool


def _detach(grads):
    return [g.detach() for g in grads]


def higher_meta_gradient(model, episode, config: HigherConfig) -> dict[str, torch.Tensor]:
    """The meta-gradient as higher's MAML example computes it: per task, ``inner_steps`` steps of
    a differentiable SGD inside ``higher.innerloop_ctx``, then ``backward`` of the query loss /
    T, which accumulates into the module's ``.grad``."""
    import higher

    params = list(model.parameters())
    for q in params:
        q.grad = None
    inner_opt = torch.optim.SGD(params, lr=config.inner_lr)
    callback = _detach if config.first_order else None
    e, n = episode, len(episode)
    for sx, sy, qx, qy in zip(e.support_x, e.support_y, e.query_x, e.query_y, strict=True):
        with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fnet, opt):
            for _ in range(config.inner_steps):
                opt.step(F.cross_entropy(fnet(sx), sy), grad_callback=callback)
            (F.cross_entropy(fnet(qx), qy) / n).backward()
    return {k: q.grad for k, q in model.named_parameters()}


def with_torch_batch_norm(net: Conv4) -> Conv4:
    """A copy of ``net`` whose batch norms are ``nn.BatchNorm2d(track_running_stats=False)``
    with the same affine weights: batch statistics, as higher's example network has them."""
    twin = copy.deepcopy(net)
    for block in twin.modules():
        for name, child in list(block.named_children()):
            if isinstance(child, BatchStatNorm2d):
                bn = nn.BatchNorm2d(child.weight.numel(), eps=child.eps, track_running_stats=False)
                bn = bn.to(child.weight)
                with torch.no_grad():
                    bn.weight.copy_(child.weight)
                    bn.bias.copy_(child.bias)
                setattr(block, name, bn)
    return twin


def build(n_tasks: int, dtype=torch.float32, dev=None):
    """Conv4 (seed 0), its parameters, and an episode of random images (seed 1)."""
    seed_everything(0)
    net = Conv4(n_classes=N_WAY, hidden=64, image_size=28).to(dev, dtype)
    g = torch.Generator().manual_seed(1)
    sx = torch.rand(n_tasks, N_WAY, 1, 28, 28, generator=g)
    qx = torch.rand(n_tasks, N_WAY * QUERIES, 1, 28, 28, generator=g)
    sy = torch.arange(N_WAY).repeat(n_tasks, 1)
    qy = torch.arange(N_WAY).repeat_interleave(QUERIES).repeat(n_tasks, 1)
    episode = Episode(sx.to(dtype), sy, qx.to(dtype), qy).to(dev)
    return net, dict(net.named_parameters()), episode


def variant(net, path: str, steps: int, first_order: bool):
    """The model and config that run ``path``."""
    common = dict(inner_steps=steps, inner_lr=INNER_LR, first_order=first_order)
    if path == "higher":
        return with_torch_batch_norm(net), HigherConfig(**common)
    if path == "plain":
        original = copy.deepcopy(net)
        for m in original.modules():
            if isinstance(m, BatchStatNorm2d):
                m.__class__ = OriginalBatchNorm
        return original, MAMLConfig(**common, vectorise=False, fast_loop=False)
    if path == "plain-bn":
        return net, MAMLConfig(**common, vectorise=False, fast_loop=False)
    if path == "vmap":
        return net, MAMLConfig(**common, vectorise=True)
    return net, MAMLConfig(**common)


def one_iteration(model, params, episode, config) -> dict[str, torch.Tensor]:
    if isinstance(config, HigherConfig):  # the model's own parameters, equal to params
        grads = higher_meta_gradient(model, episode, config)
    else:
        grads, _ = meta_gradient(model, params, episode, F.cross_entropy, config)
    synchronize()  # an accelerator's queued kernels count in the time
    return grads


ABLATION = {  # label: switches of ablation_loop; every row but the first shares today's BN
    "centred BN": dict(channels_last=False, fused=False),
    "centred BN + channels-last": dict(channels_last=True, fused=False),
    "centred BN + fused kernel": dict(channels_last=False, fused=True),
    "channels-last + fused kernel (each task alone)": dict(channels_last=True, fused=True),
    "each task alone, inner torch.autograd.grad": dict(
        channels_last=True, fused=True, inner="autograd"
    ),
    "each task alone, one backward for all tasks": dict(
        channels_last=True, fused=True, one_backward=True
    ),
}


def ablation_loop(
    net, params, episode, steps, first_order, channels_last, fused, inner="func", one_backward=False
) -> dict[str, torch.Tensor]:
    """The per-task meta-gradient written out with each candidate speed-up as a switch."""
    leaves, n = list(params.values()), len(episode)
    total, losses = [torch.zeros_like(v) for v in leaves], []
    inner_net = with_batch_norm_kernel(net, fused=fused and first_order)
    query_net = with_batch_norm_kernel(net, fused=fused)
    for t in range(n):
        sx, qx, theta = episode.support_x[t], episode.query_x[t], params
        if channels_last:  # images and conv weights; empty_like: even for one channel
            cl = lambda x: torch.empty_like(x, memory_format=torch.channels_last).copy_(x)  # noqa: E731
            sx, qx = cl(sx), cl(qx)
            theta = {k: cl(v) if v.dim() == 4 else v for k, v in params.items()}
        sy = episode.support_y[t]

        def support_loss(p, sx=sx, sy=sy):
            return F.cross_entropy(forward_with(inner_net, p, sx), sy)

        fast = theta
        for _ in range(steps):
            if inner == "func":
                g = grad(support_loss)(fast)
            else:
                out = torch.autograd.grad(
                    support_loss(fast), list(fast.values()), create_graph=not first_order
                )
                g = dict(zip(fast, out, strict=True))
            g = {k: v.detach() for k, v in g.items()} if first_order else g
            fast = {k: w - INNER_LR * g[k] for k, w in fast.items()}
        loss = F.cross_entropy(forward_with(query_net, fast, qx), episode.query_y[t]) / n
        if one_backward:
            losses.append(loss)
        else:
            total = [a + b for a, b in zip(total, torch.autograd.grad(loss, leaves), strict=True)]
    if one_backward:
        total = torch.autograd.grad(torch.stack(losses).sum(), leaves)
    return dict(zip(params, total, strict=True))


def time_interleaved(runs: dict, rounds: int, bar) -> dict:
    """Median-ready times: every run once per round, in alternating order, after a warm-up."""
    times = {key: [] for key in runs}
    for r in range(rounds + 1):  # round 0 warms up
        for key in list(runs) if r % 2 else list(runs)[::-1]:
            start = time.perf_counter()
            runs[key]()
            if r:
                times[key].append(time.perf_counter() - start)
            bar.update()
    return times


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_memory(spec: dict) -> float:
    """Peak memory increase (MB) of one meta-iteration after a warm-up, in this process."""
    net, params, episode = build(spec["batch"], dev=device())
    model, config = variant(net, spec["path"], spec["steps"], spec["first_order"])
    one_iteration(model, params, episode, config)
    gc.collect()
    dev = episode.support_x.device
    if dev.type != "cpu":
        return device_peak_mb(lambda: one_iteration(model, params, episode, config), dev)
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
    before = _status_kb("VmRSS")
    one_iteration(model, params, episode, config)
    return (_status_kb("VmHWM") - before) / 1024


def memory_in_fresh_process(spec: dict) -> float:
    # a fixed mmap threshold returns every freed tensor to the system at once, so the RSS
    # before the measured iteration holds no memory cached by malloc from the warm-up. The
    # Makefile's GLIBC_TUNABLES does the opposite (it keeps freed memory for reuse, and takes
    # precedence): with it the measured iteration reuses the warm-up's pages and reads 0 MB
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "METALIB_PROGRESS": "0"}
    env.pop("GLIBC_TUNABLES", None)
    done = subprocess.run(
        [sys.executable, __file__, "--memory-of", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout.strip().splitlines()[-1])


def count_flops(model, params, episode, config) -> int:
    with FlopCounterMode(display=False) as counter:
        one_iteration(model, params, episode, config)
    return counter.get_total_flops()


def relative(a: dict, b: dict) -> float:
    """‖a − b‖ / ‖b‖ over all parameters, in float64."""
    x, y = (torch.cat([v.detach().double().flatten().cpu() for v in g.values()]) for g in (a, b))
    return float((x - y).norm() / y.norm())


def check_gradients(steps: int, first_order: bool, paths: list[str], n_tasks: int = 8) -> dict:
    """Per task, every path's meta-gradient against the plain loop's in float64.

    Returns ``{path: (float64 differences, float32 differences)}`` over ``n_tasks`` tasks, plus
    a row for the plain loop with θ nudged by one float32 ulp: how far rounding alone moves a
    meta-gradient (ReLU and max-pool kinks make some tasks' meta-gradients jump).
    """
    net64, params64, ep64 = build(n_tasks, torch.float64, device())
    net32, params32, ep32 = build(n_tasks, torch.float32, device())
    g = torch.Generator().manual_seed(2)
    nudged = {
        k: (v.detach() * (1 + 2.0**-23 * torch.randn(v.shape, generator=g).sign().to(v)))
        for k, v in params32.items()
    }
    nudged = {k: v.requires_grad_() for k, v in nudged.items()}
    variants64 = {p: variant(net64, p, steps, first_order) for p in ["plain", *paths]}
    variants32 = {p: variant(net32, p, steps, first_order) for p in ["plain", *paths]}
    rows = {p: ([], []) for p in [*paths, "nudged"]}
    for t in range(n_tasks):
        ref = one_iteration(variants64["plain"][0], params64, ep64.task(t), variants64["plain"][1])
        for p in paths:
            model, config = variants64[p]
            rows[p][0].append(relative(one_iteration(model, params64, ep64.task(t), config), ref))
            model, config = variants32[p]
            rows[p][1].append(relative(one_iteration(model, params32, ep32.task(t), config), ref))
        model, config = variants32["plain"]
        rows["nudged"][1].append(relative(one_iteration(model, nudged, ep32.task(t), config), ref))
    return rows


def top_ops(model, params, episode, config, n: int = 12) -> tuple[list[tuple], float, int]:
    """The ``n`` ops with most self CPU time in one meta-iteration; the total; the aten calls."""
    one_iteration(model, params, episode, config)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        one_iteration(model, params, episode, config)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e3
    calls = sum(e.count for e in events if e.key.startswith("aten::"))
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:n]
    return [(e.key, e.self_cpu_time_total / 1e3, e.count) for e in ranked], total, calls


def _order(first_order: bool) -> str:
    return "first" if first_order else "second"


def _group(batch: int, steps: int, first_order: bool) -> str:
    return f"meta-batch {batch}, {steps} step{'s' * (steps > 1)}, {_order(first_order)} order"


def report(args, threads, dev, groups, paths, times, memory, flops, checks, profiles) -> str:
    """The Markdown of the timing table, the gradient check and the profiles."""
    med = statistics.median
    against = [a for a in ("higher", "plain") if a in paths]  # the ratio columns
    default_is = (
        "fast loop (the support steps of 8 tasks at a time under `vmap`, then each task's "
        "queries alone)"
        if dev.type != "cuda"
        else "vmap"
    )
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, {threads} threads, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, device {dev}. One-minute load "
        "average before the timed rounds, after the main table's, after the ablation's: "
        + " / ".join(f"{x:.1f}" for x in args.loads)
        + " (this benchmark alone adds about 1; more means other jobs shared the cores).",
        "",
        "Command: `python benchmarks/maml_speed.py " + shlex.join(sys.argv[1:]) + "`",
        "",
        "One meta-iteration = `meta_gradient` over the meta-batch: Conv4-64, 28 x 28 random "
        f"images, {N_WAY}-way 1-shot, {QUERIES} queries per class, inner lr {INNER_LR}. Time: "
        f"median of {args.rounds} interleaved rounds after a warm-up. × vs higher, × vs plain: "
        f"median of the per-round ratios of higher's time, and of the {LABELS['plain']}'s, to "
        "the path's (above 1: the path is faster). higher: `higher.innerloop_ctx` as in its MAML "
        "example, on the same Conv4 with `nn.BatchNorm2d(track_running_stats=False)`. "
        "Peak MB: peak RSS increase during one meta-iteration after a warm-up, each variant "
        "in a fresh process. GFLOP: "
        "`torch.utils.flop_counter.FlopCounterMode`'s count for one meta-iteration, which counts "
        "2 per multiply-add of the convolutions (forward, backward and double backward) and "
        "matrix products only -- elementwise operations, reductions, batch norm and pooling are "
        "not counted -- in the plain loop (higher counts the same); the paths under `vmap` "
        "count more (their convolutions' backward also computes gradients the loop skips). "
        "GFLOP/s: the plain loop's count / the median time, so the work the algorithm needs per "
        f"second. `default` is `MAMLConfig()`, here the {default_is}; the queries in "
        "channels-last memory with the fused batch-norm kernel.",
        "",
        "| meta-batch | inner steps | order | path | s / iteration | "
        + "".join(f"× vs {a} | " for a in against)
        + "peak MB | GFLOP | GFLOP/s |",
        "| ---: | ---: | --- | --- | ---: | " + "---: | " * len(against) + "---: | ---: | ---: |",
    ]
    for b, s, fo in groups:
        gflop = flops[(b, s, fo)] / 1e9
        for p in paths:
            t = times[(b, s, fo, p)]
            ratios = [
                med([x / y for x, y in zip(times[(b, s, fo, a)], t, strict=True)]) for a in against
            ]
            mem = f"{memory[(b, s, fo, p)]:.0f}" if (b, s, fo, p) in memory else "–"
            lines.append(
                f"| {b} | {s} | {_order(fo)} | {LABELS[p]} | {med(t):.2f} | "
                + "".join(f"{r:.2f} | " for r in ratios)
                + f"{mem} | {gflop:.1f} | {gflop / med(t):.0f} |"
            )
    lines += reading(groups, paths, times)
    if checks:
        lines += [
            "",
            "Same meta-gradient: relative difference ‖g − g_plain‖ / ‖g_plain‖ per task (8 "
            "tasks), against the plain loop in float64. float32 is compared with the float64 "
            "plain loop; the last row of each block is the float32 plain loop with θ nudged by "
            "one ulp, i.e. how far rounding alone moves these meta-gradients.",
            "",
            "| inner steps | order | path | float64: max | float32: median | float32: max |",
            "| ---: | --- | --- | ---: | ---: | ---: |",
        ]
        for (s, fo), rows in checks.items():
            for p, (d64, d32) in rows.items():
                label = "plain loop, θ nudged by 1 ulp" if p == "nudged" else LABELS[p]
                first = f"{max(d64):.0e}" if d64 else "–"
                lines.append(
                    f"| {s} | {_order(fo)} | {label} | {first} | {med(d32):.1e} | {max(d32):.1e} |"
                )
    for (p, s), (b, ops, total, calls) in profiles.items():
        lines += [
            "",
            f"Profile of the {LABELS[p]}, {_group(b, s, False)} "
            f"(torch.profiler, self CPU time of each op; all {calls} op calls: {total:.0f} ms):",
            "",
            "| op | self ms | share | calls | µs / call |",
            "| --- | ---: | ---: | ---: | ---: |",
            *(
                f"| `{k}` | {ms:.0f} | {ms / total:.0%} | {n} | {1e3 * ms / n:.0f} |"
                for k, ms, n in ops
            ),
        ]
    return "\n".join(lines) + "\n"


def reading(groups, paths, times) -> list[str]:
    """A few sentences on the table: the default against higher and the plain loop."""
    if "default" not in paths:
        return []
    med = statistics.median

    def ratio(g, other):
        pairs = zip(times[(*g, other)], times[(*g, "default")], strict=True)
        return med([x / y for x, y in pairs])

    out = [""]
    if "higher" in paths:
        short = [g for g in groups if ratio(g, "higher") < 1.5]
        out.append(
            "Reading: the default runs "
            + "; ".join(f"{ratio(g, 'higher'):.2f}× ({_group(*g)})" for g in groups)
            + " as fast as higher. "
            + (
                "Short of 1.5×: " + "; ".join(_group(*g) for g in short) + ". "
                if short
                else "Every setting is at least 1.5×. "
            )
        )
    if "plain" in paths:
        out.append(
            "Against the plain loop: "
            + "; ".join(f"{ratio(g, 'plain'):.2f}× ({_group(*g)})" for g in groups)
            + "."
        )
    out.append(
        "Where the time goes (the profiles below): a task's support set is 5 images, so each "
        "inner step is a few hundred small operations -- forward, backward, and with second "
        "order their double backward in the outer pass -- whose per-call cost, not arithmetic, "
        "sets the time; with 5 second-order steps they are most of the iteration. The default "
        "adapts 8 tasks at a time under `vmap` (one call does the work of 8), then runs each "
        "task's 75 queries alone, where the arithmetic is: in channels-last memory (oneDNN's "
        "convolutions and pooling are several times faster there) with PyTorch's fused "
        "batch-norm kernel (no second derivative passes through a query's forward). Each task's "
        "query loss is differentiated only as far as its fast weights, so its graph is freed "
        "at once; one backward per chunk takes those gradients through the 8 inner loops. The "
        "plain loop computes the batch norm's variance with `x.var` (a slow reduction over "
        "(0, 2, 3) on a CPU) in the default layout; `plain-bn` from centred sums. Vectorising "
        "every task (`vmap`) batches the queries too, as grouped convolutions, which oneDNN runs "
        "slowly and in gigabytes at meta-batch 32; on a GPU it is the default."
    )
    return out


def with_threads(n: int, run):
    """``run`` with ``n`` intra-op threads, the count restored afterwards."""

    def wrapped():
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return run()
        finally:
            torch.set_num_threads(before)

    return wrapped


def report_ablation(times: dict, threads: int) -> str:
    """The Markdown of the ablation: each speed-up alone, against the plain loop."""
    if not times:
        return ""
    med = statistics.median
    lines = [
        "",
        "Ablation (the per-task loop written out in this script, each candidate a switch: each "
        "task adapted alone, as the default did before its chunks), the thread count "
        f"({threads} unless said otherwise) and the chunk (tasks adapted together under `vmap`; "
        "the default's is 8); same rounds as above, interleaved:",
        "",
        "| meta-batch | inner steps | order | variant | s / iteration | × vs plain |",
        "| ---: | ---: | --- | --- | ---: | ---: |",
    ]
    for (b, s, fo, label), t in times.items():
        ratio = med([x / y for x, y in zip(times[(b, s, fo, PLAIN)], t, strict=True)])
        lines.append(f"| {b} | {s} | {_order(fo)} | {label} | {med(t):.2f} | {ratio:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after one warm-up")
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--orders", nargs="+", default=["second", "first"], choices=ORDERS)
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--no-check", action="store_true", help="skip the gradient check")
    parser.add_argument("--no-ablation", action="store_true", help="skip the ablation table")
    parser.add_argument("--no-profile", action="store_true", help="skip the op profiles")
    parser.add_argument("--out", type=Path, default=OUT, help="the Markdown file to write")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = parser.parse_args()
    threads = set_threads()
    if args.memory_of:
        print(measure_memory(json.loads(args.memory_of)))
        return 0
    if args.rounds < 1:
        raise ValueError(f"--rounds must be at least 1, got {args.rounds}")
    paths = [p for p in PATHS if p in args.paths]
    if "higher" in paths and importlib.util.find_spec("higher") is None:
        raise SystemExit(
            f"the higher path needs {HIGHER}: pip install {HIGHER} --no-deps (make bench does), "
            "or leave it out: --paths plain plain-bn default vmap"
        )
    dev = device()
    groups = [(b, s, o == "first") for b in args.batches for s in args.steps for o in args.orders]
    setups = {b: build(b, dev=dev) for b in args.batches}
    runs, flops = {}, {}
    for b, s, fo in groups:
        net, params, episode = setups[b]
        for p in paths:
            model, config = variant(net, p, s, fo)
            runs[(b, s, fo, p)] = functools.partial(one_iteration, model, params, episode, config)
        model, config = variant(net, "plain-bn", s, fo)  # what the algorithm needs
        flops[(b, s, fo)] = count_flops(model, params, episode, config)
    ablation = {}
    if not args.no_ablation:
        b = 16 if 16 in args.batches else args.batches[0]
        net, params, episode = setups[b]
        for fo in sorted({fo for _, _, fo in groups}):
            model, config = variant(net, "plain", 1, fo)
            ablation[(b, 1, fo, PLAIN)] = functools.partial(
                one_iteration, model, params, episode, config
            )
            for label, switches in ABLATION.items():
                ablation[(b, 1, fo, label)] = functools.partial(
                    ablation_loop, net, params, episode, 1, fo, **switches
                )
        for s in sorted({1, max(args.steps)}):  # the thread count, second order
            for p in ("plain", "default"):
                model, config = variant(net, p, s, False)
                run = functools.partial(one_iteration, model, params, episode, config)
                name = PLAIN if p == "plain" else "default"
                if s > 1 or p == "default":
                    ablation[(b, s, False, name)] = run
                ablation[(b, s, False, f"{name}, 1 thread")] = with_threads(1, run)
            for chunk in (1, 4, 16):  # tasks adapted together under vmap; the default is 8
                config = replace(variant(net, "default", s, False)[1], chunk=chunk)
                run = functools.partial(one_iteration, net, params, episode, config)
                ablation[(b, s, False, f"default, chunk {chunk}")] = run
    bar = progress(total=(args.rounds + 1) * (len(runs) + len(ablation)), desc="meta-iterations")
    args.loads = [os.getloadavg()[0]]  # other jobs on the machine move every figure
    times = time_interleaved(runs, args.rounds, bar)
    args.loads.append(os.getloadavg()[0])
    ablation_times = time_interleaved(ablation, args.rounds, bar)
    args.loads.append(os.getloadavg()[0])
    bar.close()
    memory = {}
    if not args.no_memory:
        for key in progress(list(runs), desc="peak memory"):
            b, s, fo, p = key
            memory[key] = memory_in_fresh_process(dict(batch=b, steps=s, first_order=fo, path=p))
    checks = {}
    if not args.no_check:
        for s, fo in progress(sorted({(s, fo) for _, s, fo in groups}), desc="gradient check"):
            checks[(s, fo)] = check_gradients(s, fo, paths)
    profiles = {}
    if not args.no_profile:
        b = 16 if 16 in args.batches else args.batches[0]
        net, params, episode = setups[b]
        steps = max(args.steps)
        chosen = [("plain", 1), ("default", 1), ("higher", steps), ("default", steps)]
        for p, s in [(p, s) for p, s in chosen if p in paths]:
            model, config = variant(net, p, s, False)
            profiles[(p, s)] = (b, *top_ops(model, params, episode, config))
    text = report(args, threads, dev, groups, paths, times, memory, flops, checks, profiles)
    text += report_ablation(ablation_times, threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
