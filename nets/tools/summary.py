"""What a model costs and sees: parameters, FLOPs, and a per-layer table with receptive fields.

    python -m nets.tools.summary resnet50 [--input_size=224] [--channels=3] [--num_classes=1000]

FLOPs come from XLA's cost analysis of the compiled forward pass at batch 1, which counts a
multiply-add as two FLOPs; papers count it as one, so both are
printed: "GFLOPs (XLA, MAC = 2)" and "GMACs (papers' FLOPs)".

The layer table lists every convolution and pooling window in call order with its output
shape and the receptive field of one output unit in input pixels. Fields are computed by
walking the traced program (jaxpr): convolutions and pooling windows grow the field by
(F - 1)·D·jump, element-wise ops and residual additions take the widest of their inputs, and
anything that mixes all positions (global pooling, attention) sees the whole image.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from nets.kernels import switch
from nets.tools.arithmetic import ReceptiveField, Window
from nets.tools.flops import loop_corrected_flops, sub_jaxprs

Field = tuple[ReceptiveField, ...]  # one per spatial dimension


@dataclasses.dataclass(frozen=True)
class LayerRow:
    path: str
    op: str
    output_shape: tuple[int, ...]
    field: Field

    @property
    def field_text(self) -> str:
        sizes = [f.size for f in self.field]
        return 'x'.join(str(s) for s in sizes)


def _abstract_variables(model, input_shape: Sequence[int]) -> Any:
    dummy = jnp.zeros(input_shape, jnp.float32)
    return jax.eval_shape(
        lambda: model.init({'params': jax.random.key(0), 'dropout': jax.random.key(1)}, dummy)
    )


def flops_per_example(model, input_shape: Sequence[int]) -> float:
    """FLOPs (multiply-add = 2) of one eval-mode forward pass per example, loops counted once per
    iteration (`nets.tools.flops`)."""
    variables = _abstract_variables(model, input_shape)
    inputs = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    count = loop_corrected_flops(lambda v, x: model.apply(v, x, train=False), variables, inputs)
    return count.total / input_shape[0]


def _widest(fields: list[Field]) -> Field:
    return tuple(
        ReceptiveField(max(f[d].size for f in fields), max(f[d].jump for f in fields))
        for d in range(len(fields[0]))
    )


class _FieldWalker:
    """Propagates receptive fields through a jaxpr; records conv and pooling layers."""

    def __init__(self, image_size: tuple[int, ...]):
        self.image_size = image_size
        self.rows: list[LayerRow] = []

    def whole_image(self) -> Field:
        return tuple(ReceptiveField(size, size) for size in self.image_size)

    def walk(self, jaxpr, in_fields: list[Field | None], prefix: str) -> list[Field | None]:
        env: dict[Any, Field | None] = dict(zip(jaxpr.invars, in_fields))

        def read(var):
            return env.get(var) if not hasattr(var, 'val') else None

        for eqn in jaxpr.eqns:
            fields = [read(v) for v in eqn.invars]
            tagged = [f for f in fields if f is not None]
            name = '/'.join(p for p in (prefix, str(eqn.source_info.name_stack)) if p)
            subs = sub_jaxprs(eqn)
            if not tagged:
                outs = [None] * len(eqn.outvars)
            elif len(subs) == 1 and len(subs[0].invars) == len(eqn.invars):
                outs = self.walk(subs[0], fields, name)
            else:
                outs = [self._through(eqn, fields, tagged, name)] * len(eqn.outvars)
            env.update(zip(eqn.outvars, outs))
        return [read(v) for v in jaxpr.outvars]

    def _through(self, eqn, fields, tagged, name) -> Field | None:
        primitive = eqn.primitive.name
        shape = tuple(eqn.outvars[0].aval.shape)
        if primitive == 'conv_general_dilated':
            field = fields[0]
            if field is None:
                return _widest(tagged)
            rhs_spec = eqn.params['dimension_numbers'].rhs_spec
            kernel = [eqn.invars[1].aval.shape[i] for i in rhs_spec[2:]]
            windows = [
                Window(k, s, d)
                for k, s, d in zip(kernel, eqn.params['window_strides'], eqn.params['rhs_dilation'])
            ]
            out = tuple(f.through(w) for f, w in zip(field, windows))
            sizes = 'x'.join(str(k) for k in kernel)
            self.rows.append(LayerRow(name, f'conv {sizes}/{windows[0].stride}', shape, out))
            return out
        if primitive.startswith('reduce_window'):
            field = _widest(tagged)
            dims = eqn.params['window_dimensions'][1:-1]  # channels-last: (N, *spatial, C)
            strides = eqn.params['window_strides'][1:-1]
            dilations = eqn.params.get(
                'window_dilation', (1,) * len(eqn.params['window_dimensions'])
            )[1:-1]
            windows = [Window(k, s, d) for k, s, d in zip(dims, strides, dilations)]
            out = tuple(f.through(w) for f, w in zip(field, windows))
            kind = 'max' if 'max' in primitive else 'avg'
            sizes = 'x'.join(str(k) for k in dims)
            self.rows.append(LayerRow(name, f'{kind}pool {sizes}/{windows[0].stride}', shape, out))
            return out
        if primitive.startswith(('reduce_', 'argmax', 'argmin', 'cumsum')):
            axes = eqn.params.get('axes', ())
            spatial = range(1, len(eqn.invars[0].aval.shape) - 1)
            return self.whole_image() if any(a in spatial for a in axes) else _widest(tagged)
        if primitive == 'dot_general' and len(tagged) >= 2:
            return self.whole_image()  # attention-style mixing of positions
        return _widest(tagged)


def layer_table(model, input_shape: Sequence[int]) -> list[LayerRow]:
    """Every conv and pooling layer of a forward pass (eval mode) with its output shape and
    receptive field, in call order."""
    variables = _abstract_variables(model, input_shape)
    with switch.use(conv='xla'):  # lax convolutions, whose windows it reads
        closed = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(
            variables, jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
        )
    walker = _FieldWalker(tuple(input_shape[1:-1]))
    num_variable_leaves = len(jax.tree.leaves(variables))
    start = tuple(ReceptiveField(1, 1) for _ in input_shape[1:-1])
    in_fields = [None] * num_variable_leaves + [start]
    walker.walk(closed.jaxpr, in_fields, '')
    return walker.rows


def format_summary(name: str, model, input_shape: Sequence[int]) -> str:
    from nets.registry import count_params

    params = count_params(model, input_shape)
    flops = flops_per_example(model, input_shape)
    rows = layer_table(model, input_shape)
    lines = [
        f'{name} at input {tuple(input_shape[1:])}',
        f'parameters:                  {params:,}',
        f'GFLOPs (XLA, MAC = 2):       {flops / 1e9:.3f}',
        f"GMACs (papers' FLOPs):       {flops / 2e9:.3f}",
        '',
    ]
    width = max([len(r.path) for r in rows] + [5])
    lines.append(f'{"layer":<{width}}  {"op":<14} {"output shape":<20} receptive field')
    for row in rows:
        lines.append(
            f'{row.path:<{width}}  {row.op:<14} {str(row.output_shape[1:]):<20} {row.field_text}'
        )
    return '\n'.join(lines)


def main(argv: Sequence[str]) -> None:
    from absl import flags

    import nets

    if len(argv) != 2:
        raise SystemExit(
            f'usage: python -m nets.tools.summary MODEL [--input_size=N]; models: '
            f'{nets.list_models()}'
        )
    flag_values = flags.FLAGS
    overrides = {'num_classes': flag_values.num_classes} if flag_values.num_classes else {}
    model = nets.create(argv[1], **overrides)
    size = flag_values.input_size
    print(format_summary(argv[1], model, (1, size, size, flag_values.channels)))


if __name__ == '__main__':
    from absl import app, flags

    flags.DEFINE_integer('input_size', 224, 'Height and width of the input image.')
    flags.DEFINE_integer('channels', 3, 'Input channels.')
    flags.DEFINE_integer('num_classes', 0, 'Classes of the head (0 = the variant default).')
    app.run(main)
