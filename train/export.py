"""Exports a trained classifier as one serialized StableHLO function, raw inputs to logits.

    python -m train.export --workdir=RUN --out=model.jax [--step=N] [--platforms=cpu,cuda]

The function takes a batch as the data pipeline yields it, images as uint8 (B, H, W, C) or
float signals (B, L, C), the batch dimension symbolic (any size), and returns float32 logits
(B, classes). The task's preprocessing (scaling to [0, 1], standardising with the training
split's mean and std) and the trained variables are inside it, so a consumer needs JAX only:

    exported = jax.export.deserialize(bytearray(open('model.jax', 'rb').read()))
    logits = exported.call(images)

It is traced with XLA's own convolutions and the plain attention: the CPU's oneDNN kernels
and cuDNN's fused attention are custom calls, which a serialized function cannot carry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from absl import app, flags
from jax import export as jax_export

from nets.kernels import switch
from train import cli
from train.config import ConfigError
from train.evaluate import USER_ERRORS, LoadedRun, load_trained
from train.tasks.classify import ClassificationTask

# Where jax.export can lower to (jax.export's platform names).
PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')


def inference_function(run: LoadedRun) -> Callable[[jax.Array], jax.Array]:
    """Raw batch -> float32 logits of the run's trained model in inference mode (the task's
    normalisation included; the variables are constants of the function)."""
    task = run.task
    if not isinstance(task, ClassificationTask):
        raise ConfigError(
            f'export takes classifiers (config.task=classify); this run trained '
            f'config.task={run.config.task!r}'
        )
    variables = run.variables

    def logits(inputs: jax.Array) -> jax.Array:
        return task.model.apply(variables, task.normalise(inputs), train=False).astype(jnp.float32)

    return logits


def input_spec(run: LoadedRun, batch_name: str = 'batch') -> jax.ShapeDtypeStruct:
    """The inputs' shape with a symbolic batch dimension, and their dtype as the data set
    stores them."""
    shape = run.info.example_shape
    if any(size is None for size in shape):
        raise ConfigError(f'examples of data set {run.info.name!r} vary in shape: {shape}')
    (batch,) = jax_export.symbolic_shape(batch_name)
    return jax.ShapeDtypeStruct((batch, *shape), jnp.dtype(run.info.image_dtype))


def check_platforms(platforms: Sequence[str]) -> tuple[str, ...]:
    unknown = [p for p in platforms if p not in PLATFORMS]
    if unknown or not platforms:
        raise ConfigError(f'platforms {list(platforms)} are not valid; choose from {PLATFORMS}')
    return tuple(platforms)


def export_run(
    workdir: str | Path, *, step: int | None = None, platforms: Sequence[str] = ('cpu',)
) -> jax_export.Exported:
    """The run's inference function (see the module docstring), exported for `platforms`."""
    platforms = check_platforms(platforms)
    run = load_trained(workdir, step=step)
    function = inference_function(run)
    with switch.use(conv='xla', attention='plain', matmul='xla'):
        return jax_export.export(jax.jit(function), platforms=platforms)(input_spec(run))


def write_export(exported: jax_export.Exported, out: str | Path) -> Path:
    """Writes the serialized function (jax.export's format) to `out`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(exported.serialize())
    return out


def describe(exported: jax_export.Exported) -> dict[str, Any]:
    """The function's signature and platforms, for people."""
    (inputs,) = exported.in_avals
    (outputs,) = exported.out_avals
    return {
        'input': f'{inputs.dtype}{list(inputs.shape)}',
        'output': f'{outputs.dtype}{list(outputs.shape)}',
        'platforms': list(exported.platforms),
    }


def define_flags() -> None:
    """The command line's flags (only when this module runs as the program)."""
    flags.DEFINE_string('workdir', None, 'A training workdir of a classifier.')
    flags.DEFINE_string('out', None, 'File to write the serialized function to.')
    flags.DEFINE_integer('step', None, 'Checkpoint step (default: the newest).')
    flags.DEFINE_list('platforms', ['cpu'], f'Platforms to lower for, from {PLATFORMS}.')
    flags.mark_flags_as_required(['workdir', 'out'])


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    options = flags.FLAGS
    exported = export_run(options.workdir, step=options.step, platforms=options.platforms)
    path = write_export(exported, options.out)
    signature = describe(exported)
    print(
        f'{path}: {signature["input"]} -> {signature["output"]} logits '
        f'({", ".join(signature["platforms"])}, {path.stat().st_size:,} bytes)'
    )
    return cli.EXIT_OK


if __name__ == '__main__':
    define_flags()
    cli.run(main, user_errors=USER_ERRORS)
