"""Writes docs/model_zoo.md: every registered image classifier with its parameters and FLOPs at
its ImageNet configuration, and the command that trains it on Fashion-MNIST.

    python -m experiments.sweeps.zoo_table [--out=docs/model_zoo.md] [--families=resnet,vgg]

Parameters come from `jax.eval_shape`; FLOPs from XLA's cost analysis of the forward pass at
batch 1 (`nets.tools.summary.flops_per_example`), printed as GMACs (a multiply-add counted once, as
papers count) next to XLA's own GFLOPs (multiply-add = 2).
"""

from __future__ import annotations

from pathlib import Path

from absl import app, flags

_OUT = flags.DEFINE_string('out', 'docs/model_zoo.md', 'Where to write the markdown table.')
_FAMILIES = flags.DEFINE_list('families', None, 'Only these families (default: all).')

# Input size each family was designed for (Inception v3 and its residual sibling: 299 px).
_INPUT_SIZE = {'inception_v3': 299, 'inception_resnet_v2': 299}


def train_command(name: str) -> str:
    """The command that trains model `name` on Fashion-MNIST (experiments/fashion_mnist_zoo.py)."""
    return (
        f'`python -m train.main --config=experiments/fashion_mnist_zoo.py:model={name} '
        f'--workdir=workdirs/{name}`'
    )


def main(argv: list[str]) -> None:
    del argv
    import nets
    from nets.tools.summary import flops_per_example
    from train.metrics_writer import quiet_library_logs

    quiet_library_logs()
    from experiments.fashion_mnist_zoo import IMAGE_FAMILIES

    header = [
        '| model | family | parameters | input | GMACs | GFLOPs (XLA) | train on Fashion-MNIST |',
        '|---|---|---|---|---|---|---|',
    ]
    out = Path(_OUT.value)
    families = _FAMILIES.value or nets.list_families()
    # Rows of families not measured this time are kept from the existing table.
    rows = {}
    if out.exists():
        for line in out.read_text().splitlines()[2:]:
            cells = [c.strip() for c in line.split('|')]
            if len(cells) > 3 and cells[2] not in families:
                rows[(cells[2], cells[1])] = line
    for family in families:
        if family in ('mlp', 'cnn') or family not in IMAGE_FAMILIES:
            continue  # sized by their fields (no ImageNet configuration), or not image models
        for name in nets.list_models(family):
            model = nets.create(name)
            size = _INPUT_SIZE.get(name, 224)
            if nets.model_fields(name).get('num_classes') != 1000:
                size = 32  # CIFAR-style variants
            shape = (1, size, size, 3)
            params = nets.count_params(model, shape)
            flops = flops_per_example(model, shape)
            rows[(family, f'`{name}`')] = (
                f'| `{name}` | {family} | {params:,} | {size}x{size}x3 | '
                f'{flops / 2e9:.3g} | {flops / 1e9:.3g} | {train_command(name)} |'
            )
            print(rows[(family, f'`{name}`')], flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text('\n'.join(header + [rows[key] for key in sorted(rows)]) + '\n')
    print(f'wrote {out}')


if __name__ == '__main__':
    app.run(main)
