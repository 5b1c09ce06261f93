"""What a model costs and sees: parameters, FLOPs, and a per-layer table with receptive fields.

    python -m nets.tools.summary resnet50 [--input_size=224] [--channels=3] [--length=32] \
        [--num_classes=1000] [--xla_flops]

Every registered model works: its example input is derived from its family and fields
(`example_inputs`): images for the classifiers (224x224x3 for the ImageNet variants, 299 for
Inception v3 and Inception-ResNet-v2, 32x32x3 for the CIFAR-stem ones, 28x28x1 for the small
ones), an image read row by row for the recurrent classifiers, token ids for the language
models, the Transformer and seq2seq (source and target), a digit strip and a caption for the
captioner, noise for the DCGAN (D(G(z))) and an image with a time step for the DDPM U-Net;
every other family is an image classifier. A new family whose input is not an image needs
its case in `example_inputs`.

Nothing is compiled by default: parameters come from `jax.eval_shape` and the FLOPs from the
traced program (`nets.tools.flops.analytic_forward_flops`: every matrix product and
convolution from its shapes, a multiply-add counted as two FLOPs, loops once per iteration,
the taps of a convolution that fall on padding left out); element-wise work is not counted.
Papers count a multiply-add as one, so both are printed: "GFLOPs (MAC = 2)" and "GMACs
(papers' FLOPs)". The analytic count does not cover transposed convolutions (the DCGAN's
generator); such a model gets XLA's loop-corrected count instead, and the output says so.
`--xla_flops` adds XLA's cost analysis of the compiled forward pass
(`nets.tools.flops.loop_corrected_flops`), which also counts element-wise operations.

The layer table lists every convolution and pooling window on the image input in call order
with its output shape and the receptive field of one output unit in input pixels. Fields are
computed by walking the traced program (jaxpr): convolutions and pooling windows grow the
field by (F - 1)·D·jump, element-wise ops and residual additions take the widest of their
inputs, and anything that mixes all positions (global pooling, attention) sees the whole
image. Models without an image input have no table.

Bad input (an unknown model, a flag the model's input does not have, a size the model cannot
take) prints one line `error: ...` on stderr and exits with status 64 (EX_USAGE).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from jax.extend.core import jaxpr_as_fun

from nets import registry
from nets.kernels import switch
from nets.tools.arithmetic import ReceptiveField, Window
from nets.tools.flops import analytic_forward_flops, loop_corrected_flops, sub_jaxprs

Field = tuple[ReceptiveField, ...]  # one per spatial dimension

EXIT_USAGE = os.EX_USAGE  # 64: the command was used incorrectly

# The families whose inputs are not one image; everything else is an image classifier.
TOKEN_FAMILIES = ('language_model', 'transformer', 'seq2seq')
DEFAULT_LENGTH = 32  # tokens per example of the token models (capped at a model's max_length)
# Inception v3 and its residual sibling were designed for 299 px (their stems need >= 75 px).
DESIGN_IMAGE_SIZE = {'inception_v3': 299, 'inception_resnet_v2': 299}
# Show-attend-tell's registered variant reads the course's digit strips: 4 digits side by side.
CAPTION_IMAGE_SHAPE = (28, 112, 1)
CAPTION_LENGTH = 8  # four digit names, eos and padding


@dataclasses.dataclass(frozen=True)
class ExampleInputs:
    """A model's positional inputs for one example (batch 1), as abstract arrays.

    `image` is the index of the input whose receptive fields the layer table traces (None:
    the model has no image input). `note` says how the input was chosen."""

    names: tuple[str, ...]
    specs: tuple[jax.ShapeDtypeStruct, ...]
    image: int | None = None
    note: str = ''

    def describe(self) -> str:
        parts = [
            f'{name} {tuple(spec.shape[1:])} {jnp.dtype(spec.dtype).name}'
            for name, spec in zip(self.names, self.specs)
        ]
        return ', '.join(parts) + (f' ({self.note})' if self.note else '')


def image_inputs(shape: Sequence[int], note: str = '') -> ExampleInputs:
    """One float32 image (or signal, or vector) input of `shape`, batch dimension included."""
    return ExampleInputs(
        ('inputs',), (jax.ShapeDtypeStruct(tuple(shape), jnp.float32),), image=0, note=note
    )


def _tokens(length: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((1, length), jnp.int32)


def _sequence_length(model: nn.Module, length: int | None) -> int:
    chosen = DEFAULT_LENGTH if length is None else length
    if chosen < 1:
        raise ValueError(f'length must be positive, got {chosen}')
    limit = getattr(model, 'max_length', None)
    if limit is not None and length is None:
        chosen = min(chosen, limit)
    return chosen


def _refuse(family: str, what: str, **given: Any) -> None:
    """A flag the family's input does not have is bad input, not something to ignore."""
    used = [f'--{name}' for name, value in given.items() if value is not None]
    if used:
        raise ValueError(f'{", ".join(used)} does not apply to family {family!r} ({what})')


def _default_image_shape(name: str, model: nn.Module) -> tuple[int, int, int]:
    if getattr(model, 'stem', None) == 'cifar':
        return (32, 32, 3)
    if getattr(model, 'num_classes', None) == 1000:
        size = DESIGN_IMAGE_SIZE.get(name, 224)
        return (size, size, 3)
    return (28, 28, 1)  # the course's small classifiers: MNIST-sized grey-scale images


def example_inputs(
    name: str,
    model: nn.Module,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    length: int | None = None,
) -> ExampleInputs:
    """The example input of registered model `name` (built as `model`), from its family and
    fields; `image_size`, `channels` and `length` override the defaults where the input has
    them (a ValueError where it does not)."""
    family = registry.model_family(name)
    if family in TOKEN_FAMILIES:
        _refuse(family, 'its inputs are token ids', input_size=image_size, channels=channels)
        tokens = _tokens(_sequence_length(model, length))
        if family == 'language_model':
            return ExampleInputs(('tokens',), (tokens,))
        return ExampleInputs(('inputs', 'targets'), (tokens, tokens))
    if family == 'gan':
        _refuse(
            family,
            'its input is (latent_dim,) noise; D(G(z)) is counted',
            input_size=image_size,
            channels=channels,
            length=length,
        )
        noise = jax.ShapeDtypeStruct((1, model.latent_dim), jnp.float32)
        image = f'{model.image_size}x{model.image_size}x{model.channels}'
        return ExampleInputs(('noise',), (noise,), note=f'G makes a {image} image, D scores it')
    if family == 'captioning':
        height, width, depth = CAPTION_IMAGE_SHAPE
        if image_size is not None:
            height = width = image_size
        depth = depth if channels is None else channels
        caption = _tokens(CAPTION_LENGTH if length is None else length)
        image = jax.ShapeDtypeStruct((1, height, width, depth), jnp.float32)
        return ExampleInputs(('images', 'captions'), (image, caption), image=0)
    default = (28, 28, 1) if family == 'diffusion' else _default_image_shape(name, model)
    side = default[0] if image_size is None else image_size
    depth = default[2] if channels is None else channels
    width = default[1] if image_size is None else image_size
    if family == 'rnn':
        steps = side if length is None else length
        return image_inputs(
            (1, steps, width * depth),
            note=f'a {steps}x{width}x{depth} image read row by row: {steps} steps',
        )
    _refuse(family, 'its input is an image', length=length)
    image = jax.ShapeDtypeStruct((1, side, width, depth), jnp.float32)
    if family == 'diffusion':
        time = jax.ShapeDtypeStruct((1,), jnp.int32)
        return ExampleInputs(('images', 'times'), (image, time), image=0)
    return ExampleInputs(('images',), (image,), image=0)


def _as_inputs(inputs: Sequence[int] | ExampleInputs) -> ExampleInputs:
    return inputs if isinstance(inputs, ExampleInputs) else image_inputs(inputs)


def _forward(model: nn.Module):
    return lambda variables, *xs: model.apply(variables, *xs, train=False)


def abstract_variables(model: nn.Module, inputs: Sequence[int] | ExampleInputs) -> Any:
    """The variables of `model` for `inputs` (an image shape or `ExampleInputs`) as shapes."""
    inputs = _as_inputs(inputs)
    rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}
    return jax.eval_shape(lambda *xs: model.init(rngs, *xs), *inputs.specs)


def _parameters(variables: Any) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(variables.get('params', {})))


def _batch(inputs: ExampleInputs) -> int:
    return inputs.specs[0].shape[0]


def trace_forward(model: nn.Module, inputs: ExampleInputs, variables: Any) -> Any:
    """The eval-mode forward pass on abstract `variables` and `inputs` as a ClosedJaxpr, traced
    with XLA's convolutions (whose windows and shapes the counts read)."""
    with switch.use(conv='xla', matmul='xla'):
        return jax.make_jaxpr(_forward(model))(variables, *inputs.specs)


def flops_per_example(
    model: nn.Module, inputs: Sequence[int] | ExampleInputs, variables: Any = None
) -> float:
    """XLA's FLOPs (multiply-add = 2) of one eval-mode forward pass per example, loops counted
    once per iteration (`nets.tools.flops.loop_corrected_flops`; compiles the forward pass).
    `variables`: the model's abstract variables, when already made."""
    inputs = _as_inputs(inputs)
    variables = abstract_variables(model, inputs) if variables is None else variables
    count = loop_corrected_flops(_forward(model), variables, *inputs.specs)
    return count.total / _batch(inputs)


def _analytic_flops(closed: Any) -> float:
    # Re-tracing a jaxpr is cheap next to tracing the Flax model again.
    args = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in closed.jaxpr.invars]
    return analytic_forward_flops(jaxpr_as_fun(closed), *args)


def analytic_flops_per_example(
    model: nn.Module, inputs: Sequence[int] | ExampleInputs, variables: Any = None
) -> float:
    """FLOPs (multiply-add = 2) of the matrix products and convolutions of one eval-mode
    forward pass per example, from the traced program's shapes, loops once per iteration
    (`nets.tools.flops.analytic_forward_flops`; nothing is compiled). Raises ValueError for
    operations the analytic count does not cover (transposed convolutions)."""
    inputs = _as_inputs(inputs)
    variables = abstract_variables(model, inputs) if variables is None else variables
    return _analytic_flops(trace_forward(model, inputs, variables)) / _batch(inputs)


def _widest(fields: list[Field]) -> Field:
    return tuple(
        ReceptiveField(max(f[d].size for f in fields), max(f[d].jump for f in fields))
        for d in range(len(fields[0]))
    )


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


def _walk_fields(inputs: ExampleInputs, variables: Any, closed: Any) -> list[LayerRow]:
    if inputs.image is None:
        return []
    image_shape = inputs.specs[inputs.image].shape
    walker = _FieldWalker(tuple(image_shape[1:-1]))
    start = tuple(ReceptiveField(1, 1) for _ in image_shape[1:-1])
    in_fields = [None] * len(jax.tree.leaves(variables)) + [
        start if i == inputs.image else None for i in range(len(inputs.specs))
    ]
    walker.walk(closed.jaxpr, in_fields, '')
    return walker.rows


def layer_table(
    model: nn.Module, inputs: Sequence[int] | ExampleInputs, variables: Any = None
) -> list[LayerRow]:
    """Every conv and pooling layer on the image input of a forward pass (eval mode) with its
    output shape and receptive field, in call order (none without an image input)."""
    inputs = _as_inputs(inputs)
    if inputs.image is None:
        return []
    variables = abstract_variables(model, inputs) if variables is None else variables
    return _walk_fields(inputs, variables, trace_forward(model, inputs, variables))


@dataclasses.dataclass(frozen=True)
class Summary:
    """What `summarize` measured: parameters, FLOPs per example (multiply-add = 2) and how they
    were counted, XLA's count when asked for, and the layer table."""

    name: str
    inputs: ExampleInputs
    params: int
    flops: float
    flops_method: str
    xla_flops: float | None
    rows: list[LayerRow]


def summarize(
    name: str,
    model: nn.Module,
    inputs: Sequence[int] | ExampleInputs,
    *,
    xla_flops: bool = False,
) -> Summary:
    """Parameters, FLOPs and layer table of `model` (registered as `name`) on `inputs`."""
    inputs = _as_inputs(inputs)
    variables = abstract_variables(model, inputs)
    closed = trace_forward(model, inputs, variables)
    try:
        flops = _analytic_flops(closed) / _batch(inputs)
        method = 'products and convolutions, from the traced shapes'
    except ValueError as error:
        if 'forward convolutions only' not in str(error):
            raise
        flops, xla_flops = flops_per_example(model, inputs, variables), False
        method = "XLA's count: the analytic count does not cover transposed convolutions"
    return Summary(
        name=name,
        inputs=inputs,
        params=_parameters(variables),
        flops=flops,
        flops_method=method,
        xla_flops=flops_per_example(model, inputs, variables) if xla_flops else None,
        rows=_walk_fields(inputs, variables, closed),
    )


def format_summary(
    name: str,
    model: nn.Module,
    inputs: Sequence[int] | ExampleInputs,
    *,
    xla_flops: bool = False,
) -> str:
    """The summary as text: header lines, then the layer table."""
    summary = summarize(name, model, inputs, xla_flops=xla_flops)
    lines = [
        f'{name} on {summary.inputs.describe()}',
        f'parameters:                  {summary.params:,}',
        f'GFLOPs (MAC = 2):            {summary.flops / 1e9:.4g}   ({summary.flops_method}, '
        'loops counted per iteration)',
        f"GMACs (papers' FLOPs):       {summary.flops / 2e9:.4g}",
    ]
    if summary.xla_flops is not None:
        lines.append(f'GFLOPs (XLA, MAC = 2):       {summary.xla_flops / 1e9:.4g}')
    lines.append('')
    if not summary.rows:
        lines.append('no convolution or pooling layer on an image input')
        return '\n'.join(lines)
    width = max([len(r.path) for r in summary.rows] + [5])
    lines.append(f'{"layer":<{width}}  {"op":<14} {"output shape":<20} receptive field')
    for row in summary.rows:
        lines.append(
            f'{row.path:<{width}}  {row.op:<14} {str(row.output_shape[1:]):<20} {row.field_text}'
        )
    return '\n'.join(lines)


def summary_of(
    name: str,
    *,
    image_size: int | None = None,
    channels: int | None = None,
    length: int | None = None,
    num_classes: int | None = None,
    xla_flops: bool = False,
) -> str:
    """The summary text of registered model `name` on its example input (see the flags)."""
    overrides = {} if num_classes is None else {'num_classes': num_classes}
    model = registry.create(name, **overrides)
    inputs = example_inputs(name, model, image_size=image_size, channels=channels, length=length)
    return format_summary(name, model, inputs, xla_flops=xla_flops)


def define_flags() -> None:
    """Flags of the command line only: tests import this module beside other absl programs."""
    flags.DEFINE_integer('input_size', None, "Image height and width (default: the model's).")
    flags.DEFINE_integer('channels', None, "Image channels (default: the model's).")
    flags.DEFINE_integer('length', None, 'Tokens or time steps per example (default: 32).')
    flags.DEFINE_integer('num_classes', None, 'Classes of the head (default: the variant).')
    flags.DEFINE_bool('xla_flops', False, "Also XLA's count of the compiled forward pass.")


def main(argv: Sequence[str]) -> None:
    logging.set_verbosity(logging.WARNING)
    if len(argv) != 2:
        print(
            'error: give one model name: python -m nets.tools.summary MODEL; models: '
            f'{registry.list_models()}',
            file=sys.stderr,
        )
        raise SystemExit(EXIT_USAGE)
    options = flags.FLAGS
    try:
        text = summary_of(
            argv[1],
            image_size=options.input_size,
            channels=options.channels,
            length=options.length,
            num_classes=options.num_classes,
            xla_flops=options.xla_flops,
        )
    except (ValueError, TypeError) as error:
        reason = ' '.join(str(error).split()) or type(error).__name__
        print(f'error: {reason}', file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    print(text)


if __name__ == '__main__':
    define_flags()
    app.run(main)
