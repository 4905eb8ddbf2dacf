"""One harness for every grouping method, scored against the exhaustive optimum.

:func:`compare` runs grouping methods on the same data, network, training
budget and seeds, and measures each method's grouping against the oracle:
every partition of the tasks into at most K groups, trained for the same
number of epochs on several seeds and ranked by its mean validation total.
Because grouping effects are often smaller than seed noise, the oracle also
reports the seed-to-seed rank correlation and the noise band (partitions
within two standard errors of the best), and a grouping counts as good when
it lies inside that band. The band and the paired verdicts need at least
``MIN_BAND_SEEDS`` (3) seeds; with fewer, only ranks are reported.

Methods:
  ``stl``: one group per task. ``mtl``: one group for all tasks.
  ``random``: a uniformly random partition into exactly K groups.
  ``dmtg``: :func:`tgjax.fit` with ``epochs`` search and ``epochs``
  fine-tuning epochs (each stage the budget of one oracle training).
  ``dmtg-settled``: the search runs until every row of softmax(S) reaches
  ``settle_threshold`` (or ``settle_max_epochs``), then fine-tunes.
  ``tag``: task affinity grouping (:mod:`tgjax.baselines.tag`) with
  overlapping groups; ``tag-partition``: its partition variant.
  ``exhaustive``: the seed's best partition into at most K groups;
  ``exhaustive-exact``: the seed's best partition into exactly K groups.

Every grouping other than dmtg's is trained from scratch for ``epochs``
epochs by :class:`tgjax.grouptrain.GroupingTrainer` and scored at its best
validation epoch. Costs are optimizer steps summed over every training run
a method needs (``train_steps``) and steps times branches trained
(``branch_steps``, a proxy of compute), and seconds split into
``compile_seconds`` (tracing and XLA compilation, paid by whichever method
first needs a program of a given shape, so it depends on the order methods
run in) and ``run_seconds`` (the rest of ``wall_seconds``, which does not).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from tgjax.baselines.tag import make_affinity_epoch, search_kind, select_groups
from tgjax.compiletime import CompileClock
from tgjax.config import RunConfig
from tgjax.data.base import MultiTaskData
from tgjax.grouptrain import GroupingScores, GroupingTrainer
from tgjax.partitions import (
    count_partitions,
    labels_to_partition,
    partition_from_names,
    partition_names,
    partitions,
)
from tgjax.pipeline import build_model, fit
from tgjax.stats import noise_band, rank_of, seed_rank_correlation, wilson_interval
from tgjax.tasks import TaskCodes

METHODS = (
    "stl",
    "mtl",
    "random",
    "dmtg",
    "dmtg-settled",
    "tag",
    "tag-partition",
    "exhaustive",
    "exhaustive-exact",
)
ONE_SHOT = ("random", "dmtg")
ORACLE_METHODS = ("exhaustive", "exhaustive-exact")
# The fewest seeds for the noise band and the paired verdicts: a standard
# error from two seeds rests on one difference and is too unstable to call
# groupings equal or different, so with fewer seeds only ranks are reported.
MIN_BAND_SEEDS = 3
BAND_NOTE = (
    f"No noise band or paired verdict: they need at least {MIN_BAND_SEEDS} "
    "seeds, because a standard error from fewer seeds is too unstable (with 2 "
    "seeds it rests on a single difference); only ranks and means are reported."
)
# Default limit on the oracle's partitions per seed: 10 tasks into at most 3
# groups (9,842) pass, 14 tasks into at most 4 (11.2 million) do not.
MAX_PARTITIONS = 10_000
Log = Callable[[str], None]


def oracle_size(num_tasks: int, config: CompareConfig) -> int:
    """Partitions the oracle trains per seed: every partition of the tasks
    into at most K groups (0 when no method needs the oracle).

    Example:
      >>> cc = CompareConfig(groups=4, epochs=1, seeds=(0,), methods=("exhaustive",))
      >>> oracle_size(14, cc)
      11188907
    """
    if not set(ORACLE_METHODS) & set(config.methods):
        return 0
    return count_partitions(num_tasks, config.groups)


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """Settings of a comparison.

    Attributes:
      groups: K, the most groups a method may use.
      epochs: training epochs of every grouping (and of each dmtg stage).
      seeds: seeds of every method and of the oracle.
      oneshot_seeds: seeds of the cheap one-shot methods (random and dmtg);
        None means ``seeds``.
      methods: methods to run, from ``METHODS``.
      run: network and optimiser settings shared by all methods (and the
        search settings of dmtg).
      settle_threshold: dmtg-settled stops searching when every row of
        softmax(S) has a probability at least this high.
      settle_max_epochs: the most search epochs of dmtg-settled.
      lookahead_lr: TAG's lookahead learning rate; None means the run's
        learning rate.
      top: size of the oracle's top list used for hit rates.
      chunk_size: most partitions trained in one compiled program.
      max_partitions: the most partitions the oracle may train per seed
        (None: no limit); :func:`compare` refuses larger oracles before
        training anything. See :func:`oracle_size`.
    """

    groups: int
    epochs: int
    seeds: tuple[int, ...]
    methods: tuple[str, ...]
    run: RunConfig = RunConfig()
    oneshot_seeds: tuple[int, ...] | None = None
    settle_threshold: float = 0.9
    settle_max_epochs: int = 200
    lookahead_lr: float | None = None
    top: int = 10
    chunk_size: int = 128
    max_partitions: int | None = MAX_PARTITIONS

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(
                f"methods must be a non-empty list from {METHODS}, got "
                f"{list(self.methods)} (unknown: {unknown})."
            )
        if self.groups < 1 or self.epochs < 1:
            raise ValueError(
                f"groups and epochs must be >= 1, got {self.groups} and {self.epochs}."
            )
        if not self.seeds:
            raise ValueError("seeds is empty; pass at least one seed.")
        if not 0 < self.settle_threshold < 1:
            raise ValueError(
                f"settle_threshold must be in (0, 1), got {self.settle_threshold}."
            )
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "methods", tuple(self.methods))
        if self.oneshot_seeds is not None:
            object.__setattr__(
                self, "oneshot_seeds", tuple(int(s) for s in self.oneshot_seeds)
            )

    def seeds_of(self, method: str) -> tuple[int, ...]:
        if method in ONE_SHOT and self.oneshot_seeds is not None:
            return self.oneshot_seeds
        return self.seeds


RANDOM_ENUMERATION_LIMIT = 1_000_000


def _random_exact_partition(rng, n: int, k: int):
    """A uniform partition into exactly k groups, without enumerating them.

    Each partition into k groups is the image of exactly k! labellings that
    use every label, so a uniform labelling kept only when it uses all k
    labels gives a uniform partition.
    """
    while True:
        labels = rng.integers(0, k, size=n)
        if len(np.unique(labels)) == k:
            return labels_to_partition(labels.tolist())


def _progress(say: Log, seed: int, every: float = 10.0):
    """A ``progress(done, total)`` that logs at most once per ``every`` seconds
    (and at the end) while the oracle trains one seed."""
    started = last = time.time()

    def report(done: int, total: int) -> None:
        nonlocal last
        now = time.time()
        if done < total and now - last < every:
            return
        last = now
        say(
            f"exhaustive: seed {seed}, {done:,}/{total:,} partitions trained "
            f"({now - started:.1f} s)"
        )

    return report


class _Settled(Exception):
    def __init__(self, epoch: int, settled: bool):
        self.epoch, self.settled = epoch, settled


def _metric_summary(data: MultiTaskData, metric: np.ndarray) -> dict:
    names = data.task_names
    per_task = {n: float(v) for n, v in zip(names, metric, strict=True)}
    return {"test_metric": per_task, "test_metric_total": float(np.sum(metric))}


def _fit_metric(data: MultiTaskData, test: dict) -> np.ndarray:
    return np.array([test["tasks"][n]["value"] for n in data.task_names])


def _seconds(wall: float, compile_s: float) -> dict:
    """Wall seconds split into compilation and the rest (the run)."""
    wall, compile_s = float(wall), min(float(compile_s), float(wall))
    return {
        "wall_seconds": round(wall, 3),
        "compile_seconds": round(compile_s, 3),
        "run_seconds": round(wall - compile_s, 3),
    }


def _record(method, seed, groups, val, test, metric, steps, branch_steps, clock, data):
    """One method's result on one seed; ``clock`` is (wall, compile) seconds."""
    return {
        "method": method,
        "seed": int(seed),
        "groups": groups,
        "num_groups": len(groups),
        "val_total": float(val),
        "test_total": float(test),
        **_metric_summary(data, metric),
        "train_steps": int(steps),
        "branch_steps": int(branch_steps),
        **_seconds(*clock),
    }


def _from_scores(method, seed, groupings_names, scores: GroupingScores, i, data):
    g = groupings_names
    return _record(
        method,
        seed,
        g,
        scores.val_total[i],
        scores.test_total[i],
        scores.test_metric[i],
        scores.steps,
        scores.steps * len(g),
        (scores.wall_seconds[i], scores.compile_seconds[i]),
        data,
    )


def compare(
    data: MultiTaskData, config: CompareConfig, *, log: Log | None = None
) -> dict:
    """Runs the methods and the oracle and returns records and summaries.

    Args:
      data: the data set (already restricted to the tasks to group).
      config: a :class:`CompareConfig`.
      log: optional ``log(line)`` for progress lines.

    Returns:
      ``{"records": [...], "oracle": {...} or None, "summary": {...},
      "settings": {...}}``; see :func:`write_outputs` for the files.

    Example:
      >>> from tgjax.data import load_dataset
      >>> data = load_dataset("yeast").select_tasks(["Class1", "Class2"])
      >>> cc = CompareConfig(groups=2, epochs=1, seeds=(0, 1),
      ...                    methods=("mtl", "exhaustive"),
      ...                    run=RunConfig(hidden=(8,)))
      >>> out = compare(data, cc)
      >>> len(out["oracle"]["partitions"])
      2
    """
    say = log or (lambda _line: None)
    names = data.task_names
    n, k = len(names), config.groups
    run = config.run
    n_parts = oracle_size(n, config)
    oracle_methods = ", ".join(m for m in ORACLE_METHODS if m in config.methods)
    if config.max_partitions is not None and n_parts > config.max_partitions:
        raise ValueError(
            f"The oracle ({oracle_methods}) "
            f"would train {n_parts:,} partitions of {n} tasks into at most {k} "
            f"groups on each of {len(config.seeds)} seed(s), above max_partitions="
            f"{config.max_partitions:,}. Select fewer tasks, leave the exhaustive "
            "methods out of methods, or raise max_partitions."
        )
    trainer = GroupingTrainer(data, run, config.epochs, chunk_size=config.chunk_size)
    spe = trainer.steps_per_epoch
    records: list[dict] = []
    oracle = None

    # The oracle: every partition into at most K groups, on every seed.
    if n_parts:
        say(
            f"oracle ({oracle_methods}): "
            f"{n_parts:,} partitions of {n} tasks into at most {k} groups, "
            f"trained on each of {len(config.seeds)} seed(s)"
        )
        parts = partitions(n, k)
        per_seed = []
        for seed in config.seeds:
            scores = trainer.run(parts, seed, progress=_progress(say, seed))
            per_seed.append(scores)
            for method, keep in (
                ("exhaustive", np.ones(len(parts), bool)),
                ("exhaustive-exact", np.array([len(p) == min(k, n) for p in parts])),
            ):
                if method not in config.methods:
                    continue
                i = int(np.flatnonzero(keep)[np.argmin(scores.val_total[keep])])
                rec = _from_scores(
                    method, seed, partition_names(parts[i], names), scores, i, data
                )
                rec["train_steps"] = int(scores.steps * keep.sum())
                rec["branch_steps"] = int(
                    scores.steps
                    * sum(len(p) for p, q in zip(parts, keep, strict=True) if q)
                )
                rec.update(
                    _seconds(
                        scores.wall_seconds[keep].sum(),
                        scores.compile_seconds[keep].sum(),
                    )
                )
                records.append(rec)
        oracle = _oracle(parts, per_seed, config, names)

    # Fixed groupings: one group per task, and one group for all.
    fixed = {"stl": [(i,) for i in range(n)], "mtl": [tuple(range(n))]}
    for method, grouping in fixed.items():
        if method not in config.methods:
            continue
        for seed in config.seeds_of(method):
            scores = trainer.run([grouping], seed)
            records.append(
                _from_scores(
                    method, seed, partition_names(grouping, names), scores, 0, data
                )
            )
            say(f"{method}: seed {seed} done")

    if "random" in config.methods:
        kk = min(k, n)
        few = count_partitions(n, exact=kk) <= RANDOM_ENUMERATION_LIMIT
        exact = partitions(n, exact=kk) if few else None
        for seed in config.seeds_of("random"):
            rng = np.random.default_rng([seed, 2024])
            part = (
                exact[int(rng.integers(len(exact)))]
                if few
                else _random_exact_partition(rng, n, kk)
            )
            scores = trainer.run([part], seed)
            records.append(
                _from_scores(
                    "random", seed, partition_names(part, names), scores, 0, data
                )
            )
            say(f"random: seed {seed} done")

    # The one-shot search at the oracle's budget, and searched until settled.
    dmtg_variants = (
        ("dmtg", config.epochs, None),
        ("dmtg-settled", config.settle_max_epochs, config.settle_threshold),
    )
    for method, search_epochs, threshold in dmtg_variants:
        if method not in config.methods:
            continue
        for seed in config.seeds_of(method):
            cfg = dataclasses.replace(
                run,
                groups=k,
                epochs=search_epochs,
                finetune_epochs=config.epochs,
                seed=seed,
                baseline=None,
            )
            records.append(_run_dmtg(method, data, cfg, spe, threshold))
            say(
                f"{method}: seed {seed}, {records[-1]['search_epochs']} search "
                f"epochs -> {records[-1]['groups']}"
            )

    tag_methods = [m for m in ("tag", "tag-partition") if m in config.methods]
    affinities = {}
    if tag_methods:
        for seed in config.seeds_of("tag"):
            with CompileClock() as aff_clock:
                aff = task_affinities(
                    data,
                    run,
                    config.epochs,
                    seed,
                    lookahead_lr=config.lookahead_lr or run.learning_rate,
                )
            affinities[seed] = aff.round(8).tolist()
            for method in tag_methods:
                overlap = method == "tag"
                groups, _ = select_groups(aff, k, overlap=overlap, seed=seed)
                scores = trainer.run([groups], seed)
                rec = _from_scores(
                    method, seed, partition_names(groups, names), scores, 0, data
                )
                rec["train_steps"] += spe * config.epochs
                rec["branch_steps"] += spe * config.epochs
                rec.update(
                    _seconds(
                        rec["wall_seconds"] + aff_clock.wall_seconds,
                        rec["compile_seconds"] + aff_clock.compile_seconds,
                    )
                )
                rec["tag_search"] = search_kind(n, k, overlap)
                rec["served_by"] = {
                    t: int(g) for t, g in zip(names, scores.served_by[0], strict=True)
                }
                records.append(rec)
            say(f"tag: seed {seed} done")

    if oracle is not None:
        _score_against_oracle(records, oracle, names)
    summary = _summarise(records, oracle, config, names)
    if affinities:
        summary["tag_affinities"] = {str(s): a for s, a in affinities.items()}
    settings = {
        "dataset": data.name,
        "tasks": names,
        "groups": k,
        "epochs": config.epochs,
        "steps_per_epoch": spe,
        "seeds": list(config.seeds),
        "oneshot_seeds": list(config.oneshot_seeds or config.seeds),
        "methods": list(config.methods),
        "settle_threshold": config.settle_threshold,
        "settle_max_epochs": config.settle_max_epochs,
        "max_partitions": config.max_partitions,
        "lookahead_lr": config.lookahead_lr or run.learning_rate,
        "run": run.to_dict(),
        "examples": {
            "train": len(data.train),
            "val": len(data.val),
            "test": len(data.test),
        },
    }
    return {
        "settings": settings,
        "records": records,
        "oracle": oracle,
        "summary": summary,
    }


def _run_dmtg(method, data, cfg: RunConfig, spe: int, threshold) -> dict:
    """One dmtg run; with a threshold, the search stops once S has settled."""
    search_epochs, settled = cfg.epochs, None
    if threshold is not None:
        last = {}

        def watch(event, payload):
            if event == "log":
                last["p"] = np.asarray(payload["probabilities"])
            elif event == "epoch" and payload["phase"] == "search":
                confident = float(last["p"].max(1).min()) >= threshold
                if confident or payload["epoch"] + 1 == cfg.epochs:
                    raise _Settled(payload["epoch"] + 1, confident)

        try:
            fit(data, cfg, callback=watch)
        except _Settled as s:
            search_epochs, settled = s.epoch, s.settled
        cfg = dataclasses.replace(cfg, epochs=search_epochs)
    with CompileClock() as clock:
        res = fit(data, cfg)
    m = len(res.groups)
    rec = _record(
        method,
        cfg.seed,
        res.groups,
        res.val["total_loss"],
        res.test["total_loss"],
        _fit_metric(data, res.test),
        spe * (cfg.epochs + cfg.finetune_epochs),
        spe * (cfg.groups * cfg.epochs + m * cfg.finetune_epochs),
        (clock.wall_seconds, clock.compile_seconds),
        data,
    )
    probs = np.asarray(res.probabilities)
    rec["search_epochs"] = cfg.epochs
    # Two summaries of softmax(S) at the end of the search: the mean over
    # tasks of the largest probability (the ``assignment_confidence`` of
    # 'tgjax train'), and the smallest of those (the least settled task).
    rec["assignment_confidence_mean"] = float(probs.max(1).mean())
    rec["assignment_confidence_min"] = float(probs.max(1).min())
    if settled is not None:
        rec["settled"] = bool(settled)
    return rec


def task_affinities(
    data: MultiTaskData,
    run: RunConfig,
    epochs: int,
    seed: int,
    *,
    lookahead_lr: float,
) -> np.ndarray:
    """TAG's `[tasks, tasks]` affinities averaged over one MTL run's steps.

    The run uses the shared network settings of ``run`` with one group and
    plain Adam, for ``epochs`` epochs.
    """
    import jax.numpy as jnp
    import optax

    model = build_model(dataclasses.replace(run, init="tied"), data.tasks, 1)
    opt = optax.adam(run.learning_rate)
    root = jax.random.key(seed)
    k_init, k_data = jax.random.split(root)
    x, y = jnp.asarray(data.train.x), jnp.asarray(data.train.y)
    params, mstate = model.init_variables(k_init, x[:2])
    epoch = make_affinity_epoch(
        model, TaskCodes.from_tasks(data.tasks), opt, run.batch_size, lookahead_lr
    )
    carry = (params, mstate, opt.init(params))
    z_sum = np.zeros((len(data.tasks),) * 2)
    count = np.zeros_like(z_sum)
    for e in range(epochs):
        carry, (z, c) = epoch(carry, x, y, jax.random.fold_in(k_data, e))
        z_sum += np.asarray(z, np.float64)
        count += np.asarray(c, np.float64)
    return z_sum / np.maximum(count, 1.0)


def _oracle(parts, per_seed: Sequence[GroupingScores], config, names) -> dict:
    val = np.stack([s.val_total for s in per_seed], 1)  # [partitions, seeds]
    test = np.stack([s.test_total for s in per_seed], 1)
    k = min(config.groups, len(names))
    exact = np.array([len(p) == k for p in parts])
    out = {
        "seeds": list(config.seeds),
        "parts": parts,
        "val": val,
        "exact_mask": exact,
        "partitions": [],
    }
    mean = val.mean(1)
    std = val.std(1, ddof=1) if val.shape[1] > 1 else np.zeros(len(parts))
    bands = {}
    for label, mask in (("at_most_k", np.ones(len(parts), bool)), ("exact_k", exact)):
        v = val[mask]
        idx = np.flatnonzero(mask)
        info = {"count": int(mask.sum())}
        if v.shape[1] >= 2:
            info["seed_rank_correlation"] = seed_rank_correlation(v)
        if v.shape[1] >= MIN_BAND_SEEDS:
            band = noise_band(v)
            unpaired = noise_band(v, paired=False)
            inside = np.zeros(len(parts), bool)
            inside[idx] = band["inside"]
            info.update(
                best=partition_names(parts[idx[band["best"]]], names),
                best_mean=float(mean[idx[band["best"]]]),
                noise_band_count=band["count"],
                noise_band_count_unpaired=unpaired["count"],
            )
            bands[label] = inside
        else:
            best = idx[int(np.argmin(mean[mask]))]
            info.update(
                best=partition_names(parts[best], names), best_mean=float(mean[best])
            )
        order = idx[np.argsort(mean[mask], kind="stable")]
        info["top"] = [
            {
                "groups": partition_names(parts[i], names),
                "mean": float(mean[i]),
                "std": float(std[i]),
            }
            for i in order[: config.top]
        ]
        out[label] = info
    for i, p in enumerate(parts):
        rank, pct = rank_of(mean[i], mean)
        entry = {
            "groups": partition_names(p, names),
            "num_groups": len(p),
            "val_total": val[i].tolist(),
            "test_total": test[i].tolist(),
            "mean": float(mean[i]),
            "std": float(std[i]),
            "rank": rank,
            "percentile": pct,
        }
        if "at_most_k" in bands:
            entry["in_noise_band"] = bool(bands["at_most_k"][i])
        out["partitions"].append(entry)
    out["bands"] = bands
    return out


def _score_against_oracle(records, oracle, names) -> None:
    parts = oracle["parts"]
    index = {p: i for i, p in enumerate(parts)}
    mean = oracle["val"].mean(1)
    exact = oracle["exact_mask"]
    top = oracle["at_most_k"]
    top_set = {partition_from_names(t["groups"], names) for t in top["top"]}
    top_exact = {
        partition_from_names(t["groups"], names) for t in oracle["exact_k"]["top"]
    }
    for rec in records:
        try:
            part = partition_from_names(rec["groups"], names)
        except ValueError:
            part = None  # overlapping groups are not a partition
        i = index.get(part) if part is not None else None
        if i is None:
            rec.update(oracle_rank=None, oracle_percentile=None, in_noise_band=None)
            continue
        rank, pct = rank_of(mean[i], mean)
        rec["oracle_mean"] = float(mean[i])
        rec["oracle_rank"] = rank
        rec["oracle_percentile"] = pct
        rec["in_top"] = part in top_set
        band = oracle["bands"].get("at_most_k")
        rec["in_noise_band"] = None if band is None else bool(band[i])
        if exact[i]:
            rank_e, pct_e = rank_of(mean[i], mean[exact])
            rec["exact_rank"] = rank_e
            rec["exact_percentile"] = pct_e
            rec["in_exact_top"] = part in top_exact
            band_e = oracle["bands"].get("exact_k")
            rec["in_exact_noise_band"] = None if band_e is None else bool(band_e[i])


def _mean_std(values) -> dict:
    v = np.asarray(values, np.float64)
    return {
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
        "n": len(v),
    }


def _paired(records, a: str, b: str) -> dict | None:
    """Paired comparison of two methods' validation totals on common seeds."""
    va = {r["seed"]: r["val_total"] for r in records if r["method"] == a}
    vb = {r["seed"]: r["val_total"] for r in records if r["method"] == b}
    common = sorted(set(va) & set(vb))
    if len(common) < 2:
        return None
    d = np.array([va[s] - vb[s] for s in common])
    se = float(d.std(ddof=1) / math.sqrt(len(d)))
    mean = float(d.mean())
    if len(common) < MIN_BAND_SEEDS:
        verdict = f"not judged (fewer than {MIN_BAND_SEEDS} seeds)"
    elif mean > 2 * se:
        verdict = f"{a} worse"
    elif mean < -2 * se:
        verdict = f"{a} better"
    else:
        verdict = "within noise (2 SE)"
    return {"seeds": len(common), "mean_difference": mean, "se": se, "verdict": verdict}


def _summarise(records, oracle, config: CompareConfig, names) -> dict:
    n_tasks = len(names)
    methods = {}
    for m in config.methods:
        rs = [r for r in records if r["method"] == m]
        if not rs:
            continue
        s = {
            "seeds": len(rs),
            "val_total": _mean_std([r["val_total"] for r in rs]),
            "test_total": _mean_std([r["test_total"] for r in rs]),
            "test_metric_total": _mean_std([r["test_metric_total"] for r in rs]),
            "train_steps": float(np.mean([r["train_steps"] for r in rs])),
            "branch_steps": float(np.mean([r["branch_steps"] for r in rs])),
            "wall_seconds": float(np.mean([r["wall_seconds"] for r in rs])),
            "run_seconds": float(np.mean([r["run_seconds"] for r in rs])),
            "compile_seconds": float(np.mean([r["compile_seconds"] for r in rs])),
            "num_groups": _mean_std([r["num_groups"] for r in rs]),
            "distinct_groupings": len({canonical_names(r["groups"]) for r in rs}),
        }
        scored = [r for r in rs if r.get("oracle_percentile") is not None]
        if scored:
            hits = sum(bool(r["in_top"]) for r in scored)
            lo, hi = wilson_interval(hits, len(scored))
            s["oracle_percentile"] = _mean_std([r["oracle_percentile"] for r in scored])
            s["oracle_mean"] = _mean_std([r["oracle_mean"] for r in scored])
            s["top_hits"] = {
                "top": config.top,
                "hits": hits,
                "trials": len(scored),
                "rate": hits / len(scored),
                "wilson95": [lo, hi],
            }
            band = [
                r["in_noise_band"] for r in scored if r["in_noise_band"] is not None
            ]
            if band:
                s["in_noise_band"] = {"count": int(sum(band)), "of": len(band)}
        if "settled" in rs[0]:
            s["settled"] = {"count": sum(r["settled"] for r in rs), "of": len(rs)}
            s["search_epochs"] = _mean_std([r["search_epochs"] for r in rs])
        for key in ("assignment_confidence_mean", "assignment_confidence_min"):
            if key in rs[0]:
                s[key] = _mean_std([r[key] for r in rs])
        methods[m] = s
    summary = {"methods": methods}
    if oracle is not None:
        summary["oracle"] = {
            key: oracle[key] for key in ("at_most_k", "exact_k") if key in oracle
        }
        summary["oracle"]["partitions"] = len(oracle["parts"])
        summary["oracle"]["seeds"] = len(oracle["seeds"])
        if len(oracle["seeds"]) < MIN_BAND_SEEDS:
            summary["oracle"]["noise_band_note"] = BAND_NOTE
        if "random" in config.methods:
            exact = oracle["exact_mask"]
            top = {
                partition_from_names(t["groups"], names)
                for t in oracle["at_most_k"]["top"]
            }
            in_top = sum(
                p in top for p, e in zip(oracle["parts"], exact, strict=True) if e
            )
            summary["random_top_probability_exact"] = in_top / int(exact.sum())
    claims = {}
    for other in ("mtl", "stl"):
        if "dmtg" in config.methods and other in config.methods:
            if other == "stl" and config.groups < n_tasks:
                continue
            c = _paired(records, "dmtg", other)
            if c:
                claims[f"dmtg_vs_{other}"] = c
    if claims:
        summary["claims"] = claims
    return summary


def canonical_names(groups) -> tuple:
    """A hashable, order-free form of groups of task names."""
    return tuple(sorted(tuple(sorted(g)) for g in groups))


__all__ = [
    "METHODS",
    "CompareConfig",
    "compare",
    "render_markdown",
    "task_affinities",
    "write_outputs",
]


def _fmt(ms: dict | None, digits: int = 3) -> str:
    if not ms:
        return "-"
    return f"{ms['mean']:.{digits}f} ± {ms['std']:.{digits}f}"


def render_markdown(result: dict) -> str:
    """The comparison as a Markdown report: settings, table, oracle, claims."""
    st, summ = result["settings"], result["summary"]
    lines = [
        f"# Grouping methods on {st['dataset']}: {len(st['tasks'])} tasks, "
        f"K = {st['groups']}",
        "",
        f"Tasks: {', '.join(st['tasks'])}. Every grouping trained {st['epochs']} "
        f"epochs ({st['steps_per_epoch']} steps each); seeds {st['seeds']}, "
        f"one-shot methods on {len(st['oneshot_seeds'])} seeds. Validation and "
        "test totals are sums over tasks of the mean loss; the metric total sums "
        "error percentages (classification) or MAEs (regression). Mean ± std "
        "over seeds. Costs, per seed: train steps are optimizer steps summed "
        "over every training run of the method, branch steps weight each run's "
        "steps by its branches; run s is wall time without compilation; "
        "compile s is tracing and XLA compilation, paid by whichever method "
        "first needs a program of a given shape, so it depends on the order "
        "the methods ran in and is not a cost of the method. cost.png plots "
        "branch steps.",
        "",
        "| method | seeds | val total | test total | test metric total | groups | "
        "oracle val mean | oracle percentile | in noise band | "
        "top-10 hits (95% Wilson) | train steps | branch steps | run s | "
        "compile s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m, s in summ["methods"].items():
        band = s.get("in_noise_band")
        hits = s.get("top_hits")
        band_text = f"{band['count']}/{band['of']}" if band else "-"
        hit_text = (
            f"{hits['hits']}/{hits['trials']} "
            f"[{hits['wilson95'][0]:.2f}, {hits['wilson95'][1]:.2f}]"
            if hits
            else "-"
        )
        lines.append(
            f"| {m} | {s['seeds']} | {_fmt(s['val_total'])} | "
            f"{_fmt(s['test_total'])} | {_fmt(s['test_metric_total'], 2)} | "
            f"{_fmt(s['num_groups'], 1)} | {_fmt(s.get('oracle_mean'), 3)} | "
            f"{_fmt(s.get('oracle_percentile'), 1)} | "
            f"{band_text} | {hit_text} | "
            f"{s['train_steps']:.0f} | {s['branch_steps']:.0f} | "
            f"{s['run_seconds']:.2f} | {s['compile_seconds']:.2f} |"
        )
    extra = []
    for m, s in summ["methods"].items():
        if "settled" in s:
            extra.append(
                f"- {m}: settled (every row of softmax(S) >= "
                f"{st['settle_threshold']}) in {s['settled']['count']}/"
                f"{s['settled']['of']} seeds after {_fmt(s['search_epochs'], 1)} "
                "search epochs."
            )
        if "assignment_confidence_min" in s:
            extra.append(
                f"- {m}: largest probability of each task's row of softmax(S) at "
                "the end of the search: smallest over tasks "
                f"{_fmt(s['assignment_confidence_min'], 3)}, mean over tasks "
                f"{_fmt(s.get('assignment_confidence_mean'), 3)}; "
                f"{s['distinct_groupings']} distinct groupings over "
                f"{s['seeds']} seeds."
            )
    if extra:
        lines += ["", *extra]
    oracle = summ.get("oracle")
    if oracle:
        lines += ["", "## Oracle", ""]
        if oracle.get("noise_band_note"):
            lines += [oracle["noise_band_note"], ""]
        for key, title in (("at_most_k", "at most K"), ("exact_k", "exactly K")):
            o = oracle.get(key)
            if not o:
                continue
            rc = o.get("seed_rank_correlation") or {}
            best = " | ".join(", ".join(g) for g in o["best"])
            lines.append(
                f"- {title} groups: {o['count']} partitions; best {best} "
                f"(mean {o['best_mean']:.4f}); noise band (paired, 2 SE): "
                f"{o.get('noise_band_count', '-')} partitions (unpaired: "
                f"{o.get('noise_band_count_unpaired', '-')}); seed-to-seed "
                f"Spearman rank correlation mean "
                f"{rc.get('mean') if rc.get('mean') is None else round(rc['mean'], 3)}"
                f" (min {rc.get('min') and round(rc['min'], 3)}, max "
                f"{rc.get('max') and round(rc['max'], 3)})."
            )
        lines += ["", "Top partitions (at most K):", ""]
        lines += ["| rank | groups | val mean | std |", "|---|---|---|---|"]
        for r, t in enumerate(oracle["at_most_k"]["top"], 1):
            groups = " \\| ".join(", ".join(g) for g in t["groups"])
            lines.append(f"| {r} | {groups} | {t['mean']:.4f} | {t['std']:.4f} |")
        if "random_top_probability_exact" in summ:
            lines += [
                "",
                "Chance that a uniformly random partition into exactly K groups "
                "is in the top list: "
                f"{summ['random_top_probability_exact']:.3f}.",
            ]
    if summ.get("claims"):
        lines += ["", "## Paired comparisons (validation total, common seeds)", ""]
        if any(c["seeds"] < MIN_BAND_SEEDS for c in summ["claims"].values()):
            lines += [BAND_NOTE, ""]
        for name, c in summ["claims"].items():
            lines.append(
                f"- {name}: mean difference {c['mean_difference']:+.4f} ± "
                f"{c['se']:.4f} (SE) over {c['seeds']} seeds: {c['verdict']}."
            )
    return "\n".join(lines) + "\n"


def plot_cost(result: dict, path) -> None:
    """Validation total (mean ± std over seeds) against branch steps."""
    from tgjax.figures import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for m, s in result["summary"]["methods"].items():
        x = max(s["branch_steps"], 1.0)
        ax.errorbar(
            x, s["val_total"]["mean"], yerr=s["val_total"]["std"], fmt="o", capsize=3
        )
        ax.annotate(
            m,
            (x, s["val_total"]["mean"]),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=8,
        )
    oracle = result["summary"].get("oracle")
    if oracle:
        ax.axhline(
            oracle["at_most_k"]["best_mean"],
            ls="--",
            lw=0.8,
            color="gray",
            label="oracle best (mean)",
        )
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("cost: optimizer steps x branches, summed over runs (branch steps)")
    ax.set_ylabel("validation total loss")
    ax.set_title(f"{result['settings']['dataset']}, K = {result['settings']['groups']}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def write_outputs(out_dir, result: dict) -> None:
    """Writes results.json, oracle.json (when the oracle ran), results.md and
    cost.png into ``out_dir``, each file atomically."""
    import os

    from tgjax.runio import write_json, write_text

    os.makedirs(out_dir, exist_ok=True)
    write_json(
        os.path.join(out_dir, "results.json"),
        {
            "settings": result["settings"],
            "records": result["records"],
            "summary": result["summary"],
        },
    )
    oracle = result["oracle"]
    if oracle is not None:
        write_json(
            os.path.join(out_dir, "oracle.json"),
            {
                "tasks": result["settings"]["tasks"],
                "seeds": oracle["seeds"],
                "max_groups": result["settings"]["groups"],
                "partitions": oracle["partitions"],
            },
        )
    write_text(os.path.join(out_dir, "results.md"), render_markdown(result))
    plot_cost(result, os.path.join(out_dir, "cost.png"))
