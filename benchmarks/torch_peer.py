"""A PyTorch peer of the search step, structured as the reference's code is.

Written for measurement only: the peer keeps the reference's structure so that
the comparison measures what that structure costs, not a tuned PyTorch
program. Groups own encoder modules and per-task heads in name-keyed
``nn.ModuleDict`` containers; the forward pass and the loss loop over
tasks x groups in Python; the assignment sample is
``torch.nn.functional.gumbel_softmax``; one Adam optimizer moves the weights
and S together. Initialisation is tied: one encoder and one head per task are
built, then deep-copied K times.

Inputs follow PyTorch's layout: images are `[batch, channels, height,
width]`, the transpose of tgjax's `[batch, height, width, channels]`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class TorchMLP(nn.Module):
    """ReLU MLP on flattened inputs, as :class:`tgjax.MLP`."""

    def __init__(self, in_features: int, features: Sequence[int] = (256, 256)):
        super().__init__()
        layers = []
        for width in features:
            layers += [nn.Linear(in_features, width), nn.ReLU()]
            in_features = width
        self.net = nn.Sequential(*layers)
        self.out_features = in_features

    def forward(self, x):
        return self.net(x.flatten(1))


class TorchCelebAEncoder(nn.Module):
    """The CelebA group encoder on `[batch, 3, 64, 64]`, 14,400 features."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width, momentum=0.1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width, momentum=0.1)
        self.conv3 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width, momentum=0.1)
        self.out_features = width * 15 * 15

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.max_pool2d(h, 3, 2)
        r = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(h)))))
        h = F.relu(h + r)
        h = F.avg_pool2d(h, 2)
        return h.flatten(1)


class TorchSearchPeer(nn.Module):
    """K encoders and K x N heads in nested name-keyed module dictionaries.

    Args:
      make_encoder: builds one group encoder with an ``out_features`` field.
      task_names: names of the N binary tasks.
      num_groups: K.
      tau: Gumbel-softmax temperature.
      lr: Adam learning rate of the weights and S.
    """

    def __init__(
        self,
        make_encoder: Callable[[], nn.Module],
        task_names: Sequence[str],
        num_groups: int,
        *,
        tau: float = 2.5,
        lr: float = 8e-4,
    ):
        super().__init__()
        self.task_names = list(task_names)
        self.group_names = [f"group_{k}" for k in range(num_groups)]
        self.tau = tau
        encoder = make_encoder()
        self.encoders = nn.ModuleDict(
            {g: copy.deepcopy(encoder) for g in self.group_names}
        )
        heads = {t: nn.Linear(encoder.out_features, 2) for t in self.task_names}
        self.heads = nn.ModuleDict(
            {
                g: nn.ModuleDict({t: copy.deepcopy(heads[t]) for t in self.task_names})
                for g in self.group_names
            }
        )
        self.assignment = nn.Parameter(torch.ones(len(self.task_names), num_groups))
        self.optimizer = torch.optim.Adam(self.parameters(), lr=lr)

    def forward(self, x):
        """Head outputs keyed by group then task name."""
        outputs = {}
        for g in self.group_names:
            feats = self.encoders[g](x)
            outputs[g] = {t: self.heads[g][t](feats) for t in self.task_names}
        return outputs

    def loss(self, outputs, y):
        z = F.gumbel_softmax(self.assignment, tau=self.tau, hard=False, dim=-1)
        # Missing labels (NaN) become PyTorch's ignore index: no host sync.
        labels = torch.nan_to_num(y, nan=-100.0).long()
        total = 0.0
        for i, t in enumerate(self.task_names):
            for k, g in enumerate(self.group_names):
                loss_ik = F.cross_entropy(
                    outputs[g][t], labels[:, i], ignore_index=-100
                )
                total = total + z[i, k] * loss_ik
        return total

    def train_step(self, x, y) -> torch.Tensor:
        """One update of the weights and S; returns the detached loss."""
        self.train()
        self.optimizer.zero_grad(set_to_none=True)
        total = self.loss(self.forward(x), y)
        total.backward()
        self.optimizer.step()
        return total.detach()
