"""Settings of a grouping run, as a frozen, validated dataclass.

Defaults follow the reference's CelebA settings (the DMTG paper's public
code) where they apply: Adam with learning rate 8e-4 for the weights, no
weight decay, tau fixed at 2.5, the relaxed Gumbel-softmax, one sample per
step, tied initialisation. Two defaults differ, for small data sets on a
laptop CPU: S has its own Adam with learning rate 0.03 (the reference runs
tens of thousands of steps at 8e-4; a few hundred steps at 8e-4 leave S
almost uniform), and epoch counts and the batch size fit the built-in tabular
data. ``PRESETS["celeba9-parity"]`` restores the reference's settings.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
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
      assignment_learning_rate: S's Adam learning rate; None means the
        weights' (the reference's single optimizer). The default 0.03 lets
        S settle within a few hundred steps, as small data sets need; the
        parity preset uses the weights' rate as the reference does.
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
      stream: read the data in batches through the grain pipeline instead of
        keeping the splits on the devices (see :mod:`tgjax.data.stream`);
        a :class:`tgjax.data.stream.StreamData` always streams.
      workers: decoding processes of a streamed run; 0 decodes in a thread
        of the training process. The batches do not depend on it.
    """

    groups: int = 4
    epochs: int = 20
    finetune_epochs: int = 15
    batch_size: int = 128
    learning_rate: float = 8e-4
    assignment_learning_rate: float | None = 0.03
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
    stream: bool = False
    workers: int = 0

    def __post_init__(self):
        def fix(name):
            default = _DEFAULTS[name]
            return f" Leave it out for the default, {default!r}."

        def integer(name, minimum):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ValueError(
                    f"{name} must be an integer >= {minimum}, got {v!r}." + fix(name)
                )

        def positive(name, allow_zero=False, allow_none=False):
            v = getattr(self, name)
            if v is None and allow_none:
                return
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
            ok = ok and math.isfinite(v) and (v >= 0 if allow_zero else v > 0)
            if not ok:
                bound = ">= 0" if allow_zero else "> 0"
                raise ValueError(
                    f"{name} must be a finite number {bound}, got {v!r}." + fix(name)
                )

        def choice(name, options, allow_none=False):
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if not isinstance(v, str) or v not in options:
                raise ValueError(
                    f"{name} must be one of {options}, got {v!r}." + fix(name)
                )

        integer("groups", 1)
        integer("epochs", 1)
        integer("finetune_epochs", 0)
        integer("batch_size", 1)
        integer("seed", 0)
        integer("log_every", 1)
        integer("checkpoint_every", 0)
        integer("keep_checkpoints", 1)
        integer("workers", 0)
        if not isinstance(self.stream, bool):
            raise ValueError(
                f"stream must be true or false, got {self.stream!r}." + fix("stream")
            )
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

        def int_list(name, allow_empty):
            v = getattr(self, name)
            ok = isinstance(v, (list, tuple)) and (allow_empty or len(v) > 0)
            ok = ok and all(
                isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in v
            )
            if not ok:
                what = "a list" if allow_empty else "a non-empty list"
                raise ValueError(
                    f"{name} must be {what} of integers >= 1, got {v!r}." + fix(name)
                )
            object.__setattr__(self, name, tuple(v))

        int_list("hidden", allow_empty=False)
        int_list("lr_halving_epochs", allow_empty=True)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RunConfig:
        """Builds a config; unknown or misspelt keys are an error.

        Raises:
          ValueError: naming each unknown key and the closest known one, or
            the setting whose value is invalid.
        """
        if not isinstance(values, Mapping):
            raise ValueError(
                f"Settings must be a mapping of name to value, got "
                f"{type(values).__name__}."
            )
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in values if not isinstance(k, str) or k not in known]
        if unknown:
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(str(k), known, n=1)
                hints.append(
                    f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                )
            raise ValueError(
                f"Unknown setting(s) {', '.join(hints)}; known settings: {known}."
            )
        return cls(**dict(values))

    @classmethod
    def from_json(cls, path) -> RunConfig:
        """Reads a config file written by :meth:`to_dict` (or by hand).

        A run folder's ``config.json`` works too: its ``"run"`` block holds
        the settings (the ``"data"`` block is not used).

        Raises:
          FileNotFoundError: when the file does not exist.
          ValueError: when it is a folder, unreadable, not UTF-8 JSON, not a
            JSON object, or holds unknown keys or invalid values (the message
            names the file).
        """
        if os.path.isdir(path):
            raise ValueError(
                f"Config file {path} is a folder; pass the path of a JSON file."
            )
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise FileNotFoundError(
                f"Config file {path} does not exist; check the --config path."
            ) from None
        except UnicodeDecodeError:
            raise ValueError(
                f"Config file {path} is not a UTF-8 text file; it must hold a JSON "
                'object of settings such as {"groups": 4}.'
            ) from None
        except OSError as e:
            raise ValueError(
                f"Config file {path} cannot be read ({e.strerror or e}); check its "
                "permissions."
            ) from None
        if not text.strip():
            raise ValueError(
                f'Config file {path} is empty; write a JSON object such as {{"groups":'
                " 4}, or drop --config."
            )
        try:
            values = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as e:
            raise ValueError(
                f"Config file {path} is not valid JSON ({e}); it must hold one JSON "
                'object of settings such as {"groups": 4}.'
            ) from None
        if not isinstance(values, dict):
            raise ValueError(
                f"Config file {path} must hold a JSON object of settings such as "
                f'{{"groups": 4}}, got a {type(values).__name__}.'
            )
        values = settings_block(values)
        try:
            return cls.from_dict(values)
        except ValueError as e:
            raise ValueError(f"Config file {path}: {e}") from None


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunConfig)}


def settings_block(values: dict) -> dict:
    """The settings of a config file's JSON object.

    A run folder's ``config.json`` (written by ``tgjax train``) keeps the
    settings in its ``"run"`` block next to ``"data"`` and version fields;
    that block is used. Any other object is the settings themselves.
    """
    run = values.get("run")
    if isinstance(run, dict) and "data" in values:
        return run
    return values


# Reference settings of the DMTG paper and its public code, as starting
# points: `RunConfig.from_dict({**PRESETS[name], ...})`.
PRESETS: dict[str, dict[str, Any]] = {
    "celeba9-parity": {
        "branch": "celeba",
        "learning_rate": 8e-4,
        "assignment_learning_rate": None,
        "batch_size": 256,
        "epochs": 100,
        "lr_halving_epochs": (15, 30, 45, 60, 75, 90),
        "tau": 2.5,
        "tau_schedule": "constant",
        "sample": "relaxed",
        "sample_scope": "batch",
        "init": "tied",
        "weight_decay": 0.0,
    },
}
