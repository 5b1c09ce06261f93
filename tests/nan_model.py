"""A test model whose logits turn NaN from a chosen training step on: drives the trainer's
non-finite paths (stop, skip, the skip limit) deterministically, on any CPU."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from nets import registry

NAME = 'nan_from_step_mlp'


class NanFromStepMLP(nn.Module):
    """A linear classifier that counts its training steps (collection 'counter') and returns
    NaN logits from step `nan_from_step` (1-based) on, in training and evaluation alike;
    with `nan_in_eval` its evaluation logits are always NaN (training stays finite)."""

    num_classes: int = 10
    nan_from_step: int = 5
    nan_in_eval: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        steps = self.variable('counter', 'steps', lambda: jnp.zeros((), jnp.int32))
        if train and not self.is_initializing():
            steps.value = steps.value + 1
        features = x.reshape(x.shape[0], -1).astype(jnp.float32)
        logits = nn.Dense(self.num_classes)(features)
        nan = steps.value >= self.nan_from_step
        if self.nan_in_eval and not train:
            nan = True
        return jnp.where(nan, jnp.nan, logits)


def register() -> None:
    """Registers the model unless it is (a config file imported in a subprocess)."""
    registry._load_families()
    if NAME not in registry.list_models():
        registry.register(NAME, NanFromStepMLP, family='test')


@contextlib.contextmanager
def registered() -> Iterator[str]:
    """The model registered for the duration of a test (the zoo's listings stay unchanged)."""
    register()
    try:
        yield NAME
    finally:
        registry._REGISTRY.pop(NAME, None)
