"""Settings of a grouping run, as a frozen, validated dataclass.

Defaults follow the reference's CelebA settings (METHOD.md section 6) where
they apply: one Adam with learning rate 8e-4 for the weights and S, no weight
decay, tau fixed at 2.5, the relaxed Gumbel-softmax, one sample per step,
tied initialisation. Epoch counts and the batch size default to values that
fit the built-in tabular data sets on a laptop CPU.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from collections.abc import Mapping
from typing import Any

from tgjax.distributed import parse_mesh
from tgjax.model import INITS
from tgjax.relax import TAU_SCHEDULES
from tgjax.train import SAMPLE_SCOPES, SAMPLES

BASELINES = ("mtl", "stl")
BRANCHES = ("mlp", "celeba")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Every setting of search, pruning, fine-tuning and evaluation.

    Attributes:
      groups: K, the number of candidate groups (branches), >= 1.
      epochs: epochs of the one-shot search.
      finetune_epochs: epochs of fine-tuning the pruned network (0 skips it).
      batch_size: examples per step.
      learning_rate: weights' Adam learning rate (reference: 8e-4).
      assignment_learning_rate: S's learning rate; None means the weights'.
      weight_decay: decoupled weight decay of the weights (S never gets any).
      lr_halving_epochs: epochs at which both learning rates halve (the
        reference halves at 15, 30, 45, 60, 75, 90 on CelebA).
      tau: initial (and, for "constant", fixed) temperature (reference 2.5).
      tau_schedule: "constant", "exponential" or "cosine".
      tau_final: floor of a decaying schedule, reached at the search's end.
      sample: "relaxed" (reference) or "straight_through".
      sample_scope: "batch" (one assignment per step for the whole global
        batch, reference), "example" or "device" (one assignment per slice
        of the batch on each data-parallel device).
      init: "tied" (reference) or "independent" branch initialisation.
      assignment_noise: std of the noise added to S's all-ones start.
      entropy_weight: weight of the mean entropy of softmax(S) (0 = off).
      branch: "mlp" (tabular and flattened images) or "celeba" (conv encoder).
      hidden: widths of the MLP branch.
      baseline: None (the search), "mtl" (K = 1) or "stl" (K = N, S fixed
        to the identity).
      seed: seed of initialisation, sampling and data order.
      log_every: steps between lines of metrics.jsonl.
      mesh: device mesh of the search, such as "data=4,groups=2" (see
        :func:`tgjax.distributed.parse_mesh`); None puts all devices on the
        data axis.
      checkpoint_every: search steps between checkpoints; 0 saves one at the
        end of every epoch. Only used when :func:`tgjax.fit` is given a
        checkpoint folder.
      keep_checkpoints: how many of the newest checkpoints are kept.
    """

    groups: int = 4
    epochs: int = 20
    finetune_epochs: int = 15
    batch_size: int = 128
    learning_rate: float = 8e-4
    assignment_learning_rate: float | None = None
    weight_decay: float = 0.0
    lr_halving_epochs: tuple[int, ...] = ()
    tau: float = 2.5
    tau_schedule: str = "constant"
    tau_final: float | None = None
    sample: str = "relaxed"
    sample_scope: str = "batch"
    init: str = "tied"
    assignment_noise: float = 1e-3
    entropy_weight: float = 0.0
    branch: str = "mlp"
    hidden: tuple[int, ...] = (64,)
    baseline: str | None = None
    seed: int = 0
    log_every: int = 10
    mesh: str | None = None
    checkpoint_every: int = 0
    keep_checkpoints: int = 3

    def __post_init__(self):
        def integer(name, minimum):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}.")

        def positive(name, allow_zero=False, allow_none=False):
            v = getattr(self, name)
            if v is None and allow_none:
                return
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
            ok = ok and math.isfinite(v) and (v >= 0 if allow_zero else v > 0)
            if not ok:
                bound = ">= 0" if allow_zero else "> 0"
                raise ValueError(f"{name} must be a finite number {bound}, got {v!r}.")

        def choice(name, options, allow_none=False):
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if v not in options:
                raise ValueError(f"{name} must be one of {options}, got {v!r}.")

        integer("groups", 1)
        integer("epochs", 1)
        integer("finetune_epochs", 0)
        integer("batch_size", 1)
        integer("seed", 0)
        integer("log_every", 1)
        integer("checkpoint_every", 0)
        integer("keep_checkpoints", 1)
        if self.mesh is not None:
            if not isinstance(self.mesh, str):
                raise ValueError(
                    f"mesh must be a string such as 'data=4,groups=2', got "
                    f"{self.mesh!r}."
                )
            parse_mesh(self.mesh)
        positive("learning_rate")
        positive("assignment_learning_rate", allow_none=True)
        positive("weight_decay", allow_zero=True)
        positive("tau")
        positive("tau_final", allow_none=True)
        positive("assignment_noise", allow_zero=True)
        positive("entropy_weight", allow_zero=True)
        choice("tau_schedule", TAU_SCHEDULES)
        choice("sample", SAMPLES)
        choice("sample_scope", SAMPLE_SCOPES)
        choice("init", INITS)
        choice("branch", BRANCHES)
        choice("baseline", BASELINES, allow_none=True)
        if self.tau_schedule != "constant":
            if self.tau_final is None:
                raise ValueError(
                    f"tau_schedule={self.tau_schedule!r} needs tau_final, the "
                    "temperature reached at the end of the search."
                )
            if self.tau_final > self.tau:
                raise ValueError(
                    f"tau_final ({self.tau_final}) must not exceed tau ({self.tau})."
                )
        object.__setattr__(self, "hidden", tuple(self.hidden))
        object.__setattr__(self, "lr_halving_epochs", tuple(self.lr_halving_epochs))
        if not self.hidden or any(
            isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in self.hidden
        ):
            raise ValueError(
                "hidden must be a non-empty list of integers >= 1, got "
                f"{self.hidden!r}."
            )
        if any(
            isinstance(e, bool) or not isinstance(e, int) or e < 1
            for e in self.lr_halving_epochs
        ):
            raise ValueError(
                "lr_halving_epochs must hold integers >= 1, got "
                f"{self.lr_halving_epochs!r}."
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RunConfig:
        """Builds a config; unknown or misspelt keys are an error.

        Raises:
          ValueError: naming each unknown key and the closest known one.
        """
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in values if k not in known]
        if unknown:
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(k, known, n=1)
                hints.append(
                    f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                )
            raise ValueError(
                f"Unknown setting(s) {', '.join(hints)}; known settings: {known}."
            )
        return cls(**dict(values))

    @classmethod
    def from_json(cls, path) -> RunConfig:
        """Reads a config file written by :meth:`to_dict` (or by hand)."""
        try:
            with open(path) as f:
                values = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"Config file {path} does not exist.") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"Config file {path} is not valid JSON: {e}.") from None
        if not isinstance(values, dict):
            raise ValueError(f"Config file {path} must hold a JSON object of settings.")
        return cls.from_dict(values)
