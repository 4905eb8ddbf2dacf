"""Step-time benchmark of tgjax against a PyTorch peer, in one process.

Both programs run the same search step (Gumbel-softmax sample of S, all K
branches and K x N heads, loss sum_ik z_ik L_ik, one Adam update of weights
and S) on the same synthetic data. Steps of the two are interleaved round by
round, so that load from other processes on the machine hits both alike; the
reported time is the median over the timed rounds after warm-up.

Memory: on CPU, the peak increase of the process's resident set size (RSS,
sampled every millisecond from ``/proc/self/statm``) during a few steps, over
the RSS just before them: the transient working memory of a step. tgjax also
reports XLA's own temporary-buffer size of the compiled step. On GPU, the
allocators' peak statistics.

Usage:
  PYTHONPATH=. python benchmarks/run.py --quick --json results.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time

# PyTorch's OpenMP workers busy-wait after each parallel region; with XLA's
# threads in the same process (and any other load on the machine) that spin
# steals the cores from whichever side runs next. Passive waiting keeps the
# interleaved measurements independent. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import tgjax  # noqa: E402
from tgjax.model import CelebAEncoder  # noqa: E402

try:
    import torch

    from benchmarks.torch_peer import TorchCelebAEncoder, TorchMLP, TorchSearchPeer
except ImportError:  # the peer is optional: pip install -e .[bench]
    torch = None

TAU = 2.5


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    encoder: str  # "mlp" or "conv"
    num_tasks: int
    num_groups: int
    batch: int
    in_features: int = 784  # MLP inputs
    strategy: str = "auto"


MAIN_CASES = (
    Case("mlp-yeast", "mlp", 14, 4, 256, in_features=103),
    Case("mlp-celeba40", "mlp", 40, 10, 256),
    Case("conv-celeba9", "conv", 9, 3, 32),
)


def scaling_cases() -> list[Case]:
    ks = [Case(f"scale-K{k}-N10", "mlp", 10, k, 256) for k in (1, 2, 4, 8, 16)]
    ns = [Case(f"scale-K4-N{n}", "mlp", n, 4, 256) for n in (5, 20, 40)]
    return ks + ns  # K4-N10 sits in the K sweep


# ---------------------------------------------------------------- measurement


class RssPeak:
    """Samples this process's RSS in a thread; ``peak - start`` in bytes."""

    def __init__(self, interval: float = 1e-3):
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def __enter__(self):
        self.start = self.peak = self._rss()
        self._stop = threading.Event()

        def run():
            while not self._stop.is_set():
                self.peak = max(self.peak, self._rss())
                time.sleep(self.interval)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def on_gpu() -> bool:
    return jax.default_backend() == "gpu"


def torch_device() -> str:
    return "cuda" if torch is not None and torch.cuda.is_available() else "cpu"


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(fns: dict, warmup: int, reps: int, mins: dict | None = None) -> dict:
    """Median seconds per call of each function, calls interleaved by round.

    ``mins``, when given, receives the fastest call of each function.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            times[name].append(timed(fn))
    if mins is not None:
        mins.update({name: min(t) for name, t in times.items()})
    return {name: statistics.median(t) for name, t in times.items()}


def memory_of(fn, steps: int) -> float | None:
    if on_gpu():
        return None
    with RssPeak() as rss:
        for _ in range(steps):
            fn()
    return rss.delta_mb


# ---------------------------------------------------------------- the two sides


def make_data(case: Case, seed: int = 0):
    rng = np.random.default_rng(seed)
    if case.encoder == "mlp":
        x = rng.standard_normal((case.batch, case.in_features), np.float32)
    else:
        x = rng.random((case.batch, 64, 64, 3), np.float32)
    y = rng.integers(0, 2, (case.batch, case.num_tasks)).astype(np.float32)
    return x, y


def tgjax_model(case: Case) -> tgjax.GroupedModel:
    branch = tgjax.MLP((256, 256)) if case.encoder == "mlp" else CelebAEncoder()
    return tgjax.GroupedModel(
        branch,
        nn.Dense(2),
        case.num_groups,
        case.num_tasks,
        branch_strategy=case.strategy,
    )


def build_tgjax(case: Case, x, y):
    """A compiled tgjax step closure, its compile time and XLA's analyses."""
    tasks = [tgjax.Task(f"task_{i}", "binary") for i in range(case.num_tasks)]
    model = tgjax_model(case)
    opt = tgjax.make_optimizer(8e-4)
    batch = {"x": jnp.asarray(x), "y": jnp.asarray(y)}
    state = tgjax.init_state(model, opt, jax.random.key(0), batch["x"][:2])
    step = tgjax.make_train_step(model, tasks, opt)
    tau = jnp.asarray(TAU, jnp.float32)
    jax.block_until_ready(state)

    t0 = time.perf_counter()
    compiled = step.jitted.lower(state, batch, tau).compile()
    compile_s = time.perf_counter() - t0

    cost = compiled.cost_analysis()
    if isinstance(cost, list):  # older JAX returns one dict per module
        cost = cost[0]
    mem = compiled.memory_analysis()
    info = {
        "tgjax_compile_s": compile_s,
        "xla_flops": float(cost.get("flops", float("nan"))) if cost else None,
        "tgjax_xla_temp_mb": mem.temp_size_in_bytes / 2**20 if mem else None,
        "branch_strategy": model.resolved_branch_strategy(batch["x"]),
    }
    holder = [state]

    def run():
        new, metrics = compiled(holder[0], batch, tau)
        jax.block_until_ready((new, metrics["loss"]))
        holder[0] = new

    return run, info


def build_torch(case: Case, x, y):
    dev = torch_device()
    torch.manual_seed(0)
    if case.encoder == "mlp":

        def make_encoder():
            return TorchMLP(case.in_features, (256, 256))

        xt = torch.from_numpy(x)
    else:
        make_encoder = TorchCelebAEncoder
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    names = [f"task_{i}" for i in range(case.num_tasks)]
    peer = TorchSearchPeer(make_encoder, names, case.num_groups, tau=TAU).to(dev)
    xt, yt = xt.to(dev), torch.from_numpy(y).to(dev)

    def run():
        peer.train_step(xt, yt)
        if dev == "cuda":
            torch.cuda.synchronize()

    return run


def analytic_mlp_flops(case: Case) -> float:
    """Matmul FLOPs of one training step of the MLP search network.

    Forward 2*m*n*k per dense layer; backward twice that, except the first
    layer, whose input needs no gradient.
    """
    b, k, n = case.batch, case.num_groups, case.num_tasks
    first = 2 * b * case.in_features * 256
    rest = 2 * b * 256 * 256
    heads = 2 * b * 256 * 2 * n
    return k * (2 * first + 3 * rest + 3 * heads)


# ---------------------------------------------------------------- suites


def run_case(case: Case, warmup: int, reps: int, mem_steps: int, peer=True) -> dict:
    x, y = make_data(case)
    jstep, info = build_tgjax(case, x, y)
    fns = {"tgjax": jstep}
    if peer and torch is not None:
        fns["torch"] = build_torch(case, x, y)
    fastest = {}
    med = interleaved(fns, warmup, reps, fastest)
    rec = {
        "case": case.name,
        "num_tasks": case.num_tasks,
        "num_groups": case.num_groups,
        "batch": case.batch,
        "tgjax_ms": 1e3 * med["tgjax"],
        "torch_ms": 1e3 * med["torch"] if "torch" in med else None,
    }
    rec["ratio"] = rec["torch_ms"] / rec["tgjax_ms"] if rec["torch_ms"] else None
    rec["tgjax_min_ms"] = 1e3 * fastest["tgjax"]
    if "torch" in fastest:
        rec["torch_min_ms"] = 1e3 * fastest["torch"]
    rec["tgjax_samples_per_s"] = case.batch / med["tgjax"]
    if "torch" in med:
        rec["torch_samples_per_s"] = case.batch / med["torch"]
    rec.update(info)
    if mem_steps:
        rec["tgjax_rss_delta_mb"] = memory_of(jstep, mem_steps)
        if "torch" in fns:
            rec["torch_rss_delta_mb"] = memory_of(fns["torch"], mem_steps)
        if on_gpu():
            stats = jax.devices()[0].memory_stats() or {}
            rec["tgjax_gpu_peak_mb_process"] = stats.get("peak_bytes_in_use", 0) / 2**20
            if "torch" in fns and torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
                fns["torch"]()
                rec["torch_gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return rec


def matmul_rate(reps: int, size: int = 2048) -> dict:
    """This machine's float32 matmul rate (GFLOP/s) through JAX and PyTorch."""
    a = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    dot = jax.jit(jnp.dot)
    fns = {"jax": lambda: jax.block_until_ready(dot(a, a))}
    if torch is not None:
        dev = torch_device()
        ta = torch.randn(size, size, device=dev)

        def tdot():
            torch.mm(ta, ta)
            if dev == "cuda":
                torch.cuda.synchronize()

        fns["torch"] = tdot
    med = interleaved(fns, 2, reps)
    flops = 2.0 * size**3
    return {f"{k}_matmul_gflops": flops / v / 1e9 for k, v in med.items()}


def epoch_vs_loop(reps: int) -> dict:
    """A fused lax.scan epoch against a Python loop of jitted steps."""
    n_ex, n_tasks, k, bs = 2048, 14, 4, 256
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n_ex, 103), np.float32)
    y = rng.integers(0, 2, (n_ex, n_tasks)).astype(np.float32)
    tasks = [tgjax.Task(f"task_{i}", "binary") for i in range(n_tasks)]
    model = tgjax.GroupedModel(tgjax.MLP((256, 256)), nn.Dense(2), k, n_tasks)
    opt = tgjax.make_optimizer(8e-4)
    step = tgjax.make_train_step(model, tasks, opt)
    xd, yd = jnp.asarray(x), jnp.asarray(y)

    def fresh():
        return tgjax.init_state(model, opt, jax.random.key(0), xd[:2])

    epoch = tgjax.make_epoch_fn(step.core, lambda s: jnp.float32(TAU), bs)
    t0 = time.perf_counter()
    st, _ = epoch(fresh(), xd, yd, jax.random.key(0))
    jax.block_until_ready(st)
    fused_compile_s = time.perf_counter() - t0
    holder = {"fused": st, "loop": fresh()}

    def fused():
        holder["fused"], m = epoch(holder["fused"], xd, yd, jax.random.key(1))
        jax.block_until_ready(m)

    loop_rng = np.random.default_rng(1)

    def loop():
        perm = loop_rng.permutation(n_ex)
        st = holder["loop"]
        for i in range(n_ex // bs):
            idx = perm[i * bs : (i + 1) * bs]
            st, m = step(st, {"x": x[idx], "y": y[idx]}, TAU)
        jax.block_until_ready(m)
        holder["loop"] = st

    med = interleaved({"fused": fused, "loop": loop}, 1, reps)
    return {
        "case": "epoch-yeast-like",
        "examples": n_ex,
        "steps_per_epoch": n_ex // bs,
        "fused_epoch_ms": 1e3 * med["fused"],
        "python_loop_epoch_ms": 1e3 * med["loop"],
        "loop_over_fused": med["loop"] / med["fused"],
        "fused_compile_s": fused_compile_s,
    }


def cli_run() -> dict | None:
    """Wall time of a default ``tgjax train`` run, when the CLI exists."""
    if importlib.util.find_spec("tgjax.cli") is None:
        return None
    cmd = [sys.executable, "-c", "import sys; from tgjax.cli import main; main()"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd + ["train"], capture_output=True, text=True)
    return {
        "case": "cli-train-default",
        "wall_s": time.perf_counter() - t0,
        "returncode": proc.returncode,
        "stderr_tail": proc.stderr[-400:],
    }


def machine() -> dict:
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "loadavg_start": os.getloadavg(),
    }
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
    except OSError:
        pass
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="under 2 min on 2 CPUs")
    parser.add_argument("--json", metavar="PATH", help="write the records here")
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        help="suites to skip: main scaling strategies flops epoch",
    )
    parser.add_argument(
        "--cli", action="store_true", help="also time a default `tgjax train`"
    )
    args = parser.parse_args(argv)
    if args.quick:
        warm, reps, mem, scale_reps = 1, 3, 1, 2
    else:
        warm, reps, mem, scale_reps = 2, 10, 3, 7
    t_start = time.perf_counter()
    meta = machine()
    records = []

    def report(rec):
        records.append(rec)
        print(json.dumps(rec), flush=True)

    if "main" not in args.skip:
        for case in MAIN_CASES:
            r = reps if case.encoder == "mlp" else max(2, reps // 2)
            report(run_case(case, warm, r, mem))
    if "strategies" not in args.skip and not args.quick:
        # The non-default strategies of the conv case, tgjax only; ratios
        # against the peer come from the conv-celeba9 record.
        images = make_data(MAIN_CASES[2])[0]
        auto = tgjax_model(MAIN_CASES[2]).resolved_branch_strategy(images)
        for strategy in ("vmap", "loop"):
            if strategy == auto and "main" not in args.skip:
                continue
            case = dataclasses.replace(
                MAIN_CASES[2], name=f"conv-celeba9[{strategy}]", strategy=strategy
            )
            report(run_case(case, 1, 2 if strategy == "vmap" else 3, 0, peer=False))
    if "scaling" not in args.skip:
        for case in scaling_cases():
            report(run_case(case, 1, scale_reps, 0))
    if "flops" not in args.skip:
        rate = matmul_rate(3 if args.quick else 7)
        case = MAIN_CASES[1]
        step_rec = next((r for r in records if r["case"] == case.name), None)
        if step_rec is None:
            step_rec = run_case(case, warm, reps, 0, peer=False)
        secs = step_rec["tgjax_ms"] / 1e3
        rec = {
            "case": "flops-mlp-celeba40",
            "xla_flops_per_step": step_rec["xla_flops"],
            "analytic_matmul_flops_per_step": analytic_mlp_flops(case),
            "tgjax_step_gflops": step_rec["xla_flops"] / secs / 1e9,
            "tgjax_step_analytic_gflops": analytic_mlp_flops(case) / secs / 1e9,
            **rate,
        }
        rec["fraction_of_jax_matmul"] = (
            rec["tgjax_step_gflops"] / rate["jax_matmul_gflops"]
        )
        report(rec)
    if "epoch" not in args.skip:
        report(epoch_vs_loop(2 if args.quick else 7))
    if args.cli:
        rec = cli_run()
        report(rec or {"case": "cli-train-default", "skipped": "no tgjax.cli"})

    meta["loadavg_end"] = os.getloadavg()
    meta["total_s"] = time.perf_counter() - t_start
    meta["argv"] = sys.argv
    print("\n" + summary(records))
    print(f"total {meta['total_s']:.0f} s, load {meta['loadavg_end']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": meta, "records": records}, f, indent=1)


def summary(records) -> str:
    lines = [
        "| case | tgjax ms | torch ms | torch/tgjax | tgjax min ms | torch min ms "
        "| tgjax samples/s | compile s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        if "tgjax_ms" not in r:
            continue
        lines.append(
            f"| {r['case']} | {fmt(r['tgjax_ms'])} | {fmt(r['torch_ms'])} | "
            f"{fmt(r['ratio'], '.2f')} | {fmt(r['tgjax_min_ms'])} | "
            f"{fmt(r.get('torch_min_ms'))} | {fmt(r['tgjax_samples_per_s'], '.0f')} | "
            f"{fmt(r['tgjax_compile_s'], '.1f')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
