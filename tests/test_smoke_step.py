import flax.linen as nn
import jax
import numpy as np

import tgjax
from tgjax.data import load_dataset


def test_search_step_runs_on_yeast_and_moves_assignment():
    data = load_dataset("yeast")
    n, k = len(data.tasks), 3
    model = tgjax.GroupedModel(tgjax.MLP((32,)), nn.Dense(2), k, n)
    opt = tgjax.make_optimizer(1e-2)
    state = tgjax.init_state(model, opt, jax.random.key(0), data.train.x[:2])
    step = tgjax.make_train_step(model, data.tasks, opt)
    batch = {"x": data.train.x[:64], "y": data.train.y[:64]}
    new, metrics = step(state, batch, 2.5)
    assert bool(metrics["finite"])
    assert metrics["loss_matrix"].shape == (n, k)
    assert not np.allclose(np.asarray(new.assignment), np.asarray(state.assignment))
    assert int(new.step) == 1
