"""tgjax: one-shot differentiable multi-task grouping (DMTG) in JAX."""

from tgjax.checkpoint import Checkpoints, load_checkpoint
from tgjax.config import RunConfig
from tgjax.distributed import make_mesh
from tgjax.model import MLP, CelebAEncoder, GroupedModel, prune
from tgjax.pipeline import FitResult, fit, fit_arrays
from tgjax.relax import (
    assignment_entropy,
    grouping_loss,
    gumbel_softmax,
    read_groups,
    sample_one_hot,
    temperature_schedule,
)
from tgjax.tasks import Task, TaskCodes, output_size
from tgjax.train import (
    SearchState,
    init_state,
    loss_matrix,
    make_epoch_fn,
    make_optimizer,
    make_train_step,
)

__version__ = "0.1.0"

__all__ = [
    "CelebAEncoder",
    "Checkpoints",
    "FitResult",
    "GroupedModel",
    "MLP",
    "RunConfig",
    "SearchState",
    "Task",
    "TaskCodes",
    "assignment_entropy",
    "fit",
    "fit_arrays",
    "grouping_loss",
    "gumbel_softmax",
    "init_state",
    "load_checkpoint",
    "loss_matrix",
    "make_epoch_fn",
    "make_mesh",
    "make_optimizer",
    "make_train_step",
    "output_size",
    "prune",
    "read_groups",
    "sample_one_hot",
    "temperature_schedule",
]
