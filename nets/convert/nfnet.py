"""timm's NFNet-F family (dm_nfnet_f*, nfnet_f*, nfnet_l*) into `nets.models.nfnet`.

Names: `stem.conv1..4`, `stages.S.B.{downsample.conv, conv1, conv2, conv2b, conv3,
attn_last.fc1/fc2, skipinit_gain}`, `final_conv`, `head.fc`; nets calls the block's convs
conv_shortcut, conv0, conv1, conv1b, conv2 and its squeeze-excite se/fc1, se/fc2 (timm's 1x1
convs, here Dense layers). Widths, depths, group width, bottleneck, squeeze-excite and final-conv
ratios come from the tensors. Only the F family maps (four-conv stem, extra 3x3 conv,
squeeze-excite after the last conv, final conv): timm's NF-ResNets, NF-RegNets and ECA-NFNets have
other blocks.

timm builds the F models two ways, told apart by the skip gains the DeepMind form has:
- dm_nfnet_f* (`skipinit_gain` present; the DeepMind weights): γ in the activations and
  TensorFlow 'SAME' padding, as nets' NFNet;
- nfnet_f*, nfnet_l* (no skip gain): γ folded into every conv's weight scale and PyTorch's
  symmetric padding. The convs that read an activation see the same product either way; the
  two that do not (the first stem conv, the final conv) get γ in their gain, the head 1/γ for
  the unscaled final activation, and every skip gain is 1.
Both use timm's γ constants (DeepMind's, estimated by sampling, not nets' exact ones: the field
`activation_gamma`) and its weight standardisation, fan_in·(var + 1e-5) (`ws_epsilon`,
`ws_epsilon_mode='add'`). The activation is not in the tensors: gelu (the F models) unless the
field `activation` says otherwise (nfnet_l*: silu).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nets.convert.core import Converted
from nets.convert.tensors import FlaxTree, Tensors, conv_kernel, dense_kernel

# timm.models.nfnet._nonlin_gamma (from the DeepMind reference), for the activations nets has.
TIMM_GAMMAS = {
    'identity': 1.0,
    'elu': 1.2716004848480225,
    'gelu': 1.7015043497085571,
    'relu': 1.7139588594436646,
    'selu': 1.0008515119552612,
    'sigmoid': 4.803835391998291,
    'silu': 1.7881293296813965,
    'softplus': 1.9203323125839233,
    'tanh': 1.5939117670059204,
}
TIMM_WS_EPSILON = 1e-5
DEFAULT_IMAGE_SIZE = 224
_NEEDED = ('stem.conv4.weight', 'stages.0.0.conv2b.weight', 'stages.0.0.attn_last.fc1.weight')


def _ws_conv(
    tree: FlaxTree, tensors: Tensors, torch_name: str, path: str, gain_scale: float = 1.0
) -> None:
    """ScaledStdConv2d(Same) `torch_name` (weight, bias, gain (out, 1, 1, 1)) into ScaledWSConv."""
    tree.param(f'{path}/kernel', conv_kernel(tensors.take(f'{torch_name}.weight')))
    tree.param(f'{path}/bias', tensors.take(f'{torch_name}.bias'))
    tree.param(f'{path}/gain', tensors.take(f'{torch_name}.gain').reshape(-1) * gain_scale)


def _conv_1x1_as_dense(tree: FlaxTree, tensors: Tensors, torch_name: str, path: str) -> None:
    weight = tensors.take(f'{torch_name}.weight')
    tree.param(f'{path}/kernel', dense_kernel(weight.reshape(weight.shape[:2])))
    tree.param(f'{path}/bias', tensors.take(f'{torch_name}.bias'))


def timm_nfnet(
    tensors: Tensors, model: str, fields: dict[str, Any], image_size: int | None
) -> Converted:
    """timm NormFreeNet of the NFNet-F family; see the module docstring."""
    missing = [name for name in _NEEDED if name not in tensors]
    if missing:
        raise ValueError(
            f'not a timm NFNet-F checkpoint (no {missing}); convertible timm NFNets: '
            'dm_nfnet_f*, nfnet_f*, nfnet_l* (not nf_resnet*, nf_regnet*, eca_nfnet*)'
        )
    activation = fields.get('activation', 'gelu')
    if activation not in TIMM_GAMMAS:
        raise ValueError(
            f'timm has no NFNet gamma for activation {activation!r}; valid: {sorted(TIMM_GAMMAS)}'
        )
    gamma = TIMM_GAMMAS[activation]
    deepmind_form = 'stages.0.0.skipinit_gain' in tensors
    # timm's non-DeepMind form scales by γ inside the convs; see the module docstring.
    outer_gain = 1.0 if deepmind_form else gamma
    tree = FlaxTree()
    for i in range(4):
        _ws_conv(tree, tensors, f'stem.conv{i + 1}', f'stem_conv{i}', outer_gain if i == 0 else 1.0)
    num_stages = tensors.count(r'stages\.(\d+)\.')
    depths = tuple(tensors.count(rf'stages\.{s}\.(\d+)\.') for s in range(num_stages))
    for stage, depth in enumerate(depths):
        for i in range(depth):
            prefix, path = f'stages.{stage}.{i}', f'stage{stage}_block{i}'
            if f'{prefix}.downsample.conv.weight' in tensors:
                _ws_conv(tree, tensors, f'{prefix}.downsample.conv', f'{path}/conv_shortcut')
            for torch_conv, conv in (
                ('conv1', 'conv0'),
                ('conv2', 'conv1'),
                ('conv2b', 'conv1b'),
                ('conv3', 'conv2'),
            ):
                _ws_conv(tree, tensors, f'{prefix}.{torch_conv}', f'{path}/{conv}')
            for fc in ('fc1', 'fc2'):
                _conv_1x1_as_dense(tree, tensors, f'{prefix}.attn_last.{fc}', f'{path}/se/{fc}')
            if deepmind_form:
                skip_gain = tensors.take(f'{prefix}.skipinit_gain').reshape(())
            else:
                skip_gain = np.ones((), np.float32)
            tree.param(f'{path}/skip_gain', skip_gain)
    _ws_conv(tree, tensors, 'final_conv', 'final_conv', outer_gain)
    head = tensors.take('head.fc.weight')
    tree.param('head/kernel', dense_kernel(head) / outer_gain)
    tree.param('head/bias', tensors.take('head.fc.bias'))

    widths = tuple(tensors.shape(f'stages.{s}.0.conv3.weight')[0] for s in range(num_stages))
    mid, group_width = tensors.shape('stages.0.0.conv2.weight')[:2]
    inferred = dict(
        num_classes=head.shape[0],
        depths=depths,
        widths=widths,
        stem='imagenet',
        stem_widths=tuple(tensors.shape(f'stem.conv{i + 1}.weight')[0] for i in range(4)),
        bottleneck_ratio=mid / widths[0],
        group_width=group_width,
        se_ratio=tensors.shape('stages.0.0.attn_last.fc1.weight')[0] / widths[0],
        final_conv_mult=tensors.shape('final_conv.weight')[0] / widths[-1],
        activation=activation,
        activation_gamma=gamma,
        ws_epsilon=TIMM_WS_EPSILON,
        ws_epsilon_mode='add',
        conv_padding='same' if deepmind_form else 'symmetric',
    )
    size = image_size or DEFAULT_IMAGE_SIZE
    form = 'dm_nfnet (skip gains)' if deepmind_form else 'nfnet (no skip gains)'
    return Converted(
        model,
        {**inferred, **fields},
        tree.params,
        tree.model_state(),
        (size, size, 3),
        notes=[f'read as timm {form}; activation {activation!r}'],
    )
