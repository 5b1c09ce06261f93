"""Vision Transformers into `nets.models.vit` and `nets.models.swin`.

Sources: torchvision's `VisionTransformer` and `SwinTransformer` (v1), timm's
`VisionTransformer` and `SwinTransformer` (v1), and big_vision / google-research ViT `.npz`
files (Flax names, already in Flax layouts). PyTorch keeps a layer's query, key and value as
one (3D, D) matrix; the nets attention keeps (D, heads, head_dim) kernels per projection, so the
matrix is split and the heads unfolded. big_vision's position table covers the patches only
(its class token has no position embedding), so a zero row is put in front for the class token:
the sum is the same.

A learned position table is resampled (bilinear on the patch grid, the class-token row kept)
when `image_size` asks for another grid than the checkpoint's. Fields that the source fixes
are set here: big_vision's MLP uses the tanh form of GELU, torchvision's and timm's the exact
one.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

import nets
from nets.convert.core import Converted
from nets.convert.tensors import FlaxTree, Tensors
from nets.layers.position import resize_grid_embedding

BIG_VISION_GELU = 'gelu_tanh'  # flax.linen.gelu's default, which big_vision's MlpBlock calls


def _heads(model: str, fields: dict[str, Any]) -> int:
    return int(fields.get('num_heads', nets.model_fields(model)['num_heads']))


def _attention(tree: FlaxTree, path: str, qkv: list[tuple[np.ndarray, np.ndarray]], out, heads):
    """Q, K, V as (out, in) weights with biases, and the output (weight, bias), into `path`."""
    for name, (weight, bias) in zip(('query', 'key', 'value'), qkv):
        width = weight.shape[1]
        tree.param(f'{path}/{name}/kernel', weight.T.reshape(width, heads, -1))
        tree.param(f'{path}/{name}/bias', bias.reshape(heads, -1))
    weight, bias = out
    tree.param(f'{path}/out/kernel', weight.T.reshape(heads, -1, weight.shape[0]))
    tree.param(f'{path}/out/bias', bias)


def _fused_qkv(tensors: Tensors, weight_name: str, bias_name: str):
    """(3D, D) in-projection -> [(W_q, b_q), (W_k, b_k), (W_v, b_v)]."""
    weights = np.split(tensors.take(weight_name), 3)
    biases = np.split(tensors.take(bias_name), 3)
    return list(zip(weights, biases))


def _position_table(
    table: np.ndarray, prefix: int, patch_size: int, image_size: int | None, notes: list[str]
) -> tuple[np.ndarray, int]:
    """The (1, prefix + g*g, D) table resampled to `image_size`'s grid; and the image size."""
    grid = math.isqrt(table.shape[1] - prefix)
    if grid * grid != table.shape[1] - prefix:
        raise ValueError(f'position table of {table.shape[1]} rows is not a square grid')
    native = grid * patch_size
    if image_size is None or image_size == native:
        return table, native
    if image_size % patch_size:
        raise ValueError(f'image_size {image_size} is not a multiple of the patch {patch_size}')
    new_grid = image_size // patch_size
    notes.append(
        f'pos_embedding resampled (bilinear) from a {grid}x{grid} to a {new_grid}x{new_grid} grid'
    )
    resized = resize_grid_embedding(table, (new_grid, new_grid), num_prefix_tokens=prefix)
    return np.asarray(resized), image_size


def _vit_fields(tree: FlaxTree, depth: int, **more: Any) -> dict[str, Any]:
    """The ViT fields the converted shapes fix, with `more` (what the source implies)."""
    kernel = tree.params['embedding']['kernel']
    fc1 = tree.params['encoderblock_0']['mlp']['fc1']['kernel']
    head = tree.params['head']['kernel']
    fields = dict(
        num_classes=head.shape[1],
        patch_size=kernel.shape[0],
        hidden_size=kernel.shape[-1],
        depth=depth,
        mlp_dim=fc1.shape[1],
        posemb='learned',
        stem='patch',
    )
    if 'pre_logits' in tree.params:
        fields['representation_size'] = tree.params['pre_logits']['kernel'].shape[1]
    return {**fields, **more}


def torchvision_vit(
    tensors: Tensors, model: str, fields: dict[str, Any], image_size: int | None
) -> Converted:
    """torchvision VisionTransformer (conv_proj, class_token, encoder.*, heads.*)."""
    heads = _heads(model, fields)
    tree = FlaxTree()
    tree.conv(tensors, 'conv_proj', 'embedding')
    tree.param('cls', tensors.take('class_token'))
    depth = tensors.count(r'encoder\.layers\.encoder_layer_(\d+)\.')
    for i in range(depth):
        prefix, path = f'encoder.layers.encoder_layer_{i}', f'encoderblock_{i}'
        tree.layer_norm(tensors, f'{prefix}.ln_1', f'{path}/norm1')
        attention = f'{prefix}.self_attention'
        _attention(
            tree,
            f'{path}/attention',
            _fused_qkv(tensors, f'{attention}.in_proj_weight', f'{attention}.in_proj_bias'),
            (
                tensors.take(f'{attention}.out_proj.weight'),
                tensors.take(f'{attention}.out_proj.bias'),
            ),
            heads,
        )
        tree.layer_norm(tensors, f'{prefix}.ln_2', f'{path}/norm2')
        # torchvision renamed the MLP's layers (linear_1 -> 0) in 0.13.
        old = f'{prefix}.mlp.linear_1.weight' in tensors
        tree.dense(tensors, f'{prefix}.mlp.{"linear_1" if old else 0}', f'{path}/mlp/fc1')
        tree.dense(tensors, f'{prefix}.mlp.{"linear_2" if old else 3}', f'{path}/mlp/fc2')
    tree.layer_norm(tensors, 'encoder.ln', 'encoder_norm')
    if 'heads.pre_logits.weight' in tensors:
        tree.dense(tensors, 'heads.pre_logits', 'pre_logits')
    tree.dense(tensors, 'heads.head', 'head')
    notes: list[str] = []
    patch = tensors.shape('conv_proj.weight')[-1]
    table, size = _position_table(
        tensors.take('encoder.pos_embedding'), 1, patch, image_size, notes
    )
    tree.param('pos_embedding', table)
    inferred = _vit_fields(tree, depth, pool='token', num_heads=heads, mlp_activation='gelu')
    return Converted(model, {**inferred, **fields}, tree.params, {}, (size, size, 3), notes)


def timm_vit(
    tensors: Tensors, model: str, fields: dict[str, Any], image_size: int | None
) -> Converted:
    """timm VisionTransformer with a class token (patch_embed.proj, cls_token, pos_embed,
    blocks.N.*, norm, head)."""
    if 'cls_token' not in tensors:
        raise ValueError('timm ViT without a class token: only class-token models port exactly')
    heads = _heads(model, fields)
    tree = FlaxTree()
    tree.conv(tensors, 'patch_embed.proj', 'embedding')
    tree.param('cls', tensors.take('cls_token'))
    depth = tensors.count(r'blocks\.(\d+)\.')
    for i in range(depth):
        prefix, path = f'blocks.{i}', f'encoderblock_{i}'
        tree.layer_norm(tensors, f'{prefix}.norm1', f'{path}/norm1')
        _attention(
            tree,
            f'{path}/attention',
            _fused_qkv(tensors, f'{prefix}.attn.qkv.weight', f'{prefix}.attn.qkv.bias'),
            (tensors.take(f'{prefix}.attn.proj.weight'), tensors.take(f'{prefix}.attn.proj.bias')),
            heads,
        )
        tree.layer_norm(tensors, f'{prefix}.norm2', f'{path}/norm2')
        tree.dense(tensors, f'{prefix}.mlp.fc1', f'{path}/mlp/fc1')
        tree.dense(tensors, f'{prefix}.mlp.fc2', f'{path}/mlp/fc2')
    tree.layer_norm(tensors, 'norm', 'encoder_norm')
    tree.dense(tensors, 'head', 'head')
    notes: list[str] = []
    patch = tensors.shape('patch_embed.proj.weight')[-1]
    table, size = _position_table(tensors.take('pos_embed'), 1, patch, image_size, notes)
    tree.param('pos_embedding', table)
    inferred = _vit_fields(tree, depth, pool='token', num_heads=heads, mlp_activation='gelu')
    return Converted(model, {**inferred, **fields}, tree.params, {}, (size, size, 3), notes)


def _flax_dense(tensors: Tensors, tree: FlaxTree, name: str, path: str) -> None:
    tree.param(f'{path}/kernel', tensors.take(f'{name}/kernel'))
    tree.param(f'{path}/bias', tensors.take(f'{name}/bias'))


def _flax_norm(tensors: Tensors, tree: FlaxTree, name: str, path: str) -> None:
    tree.param(f'{path}/scale', tensors.take(f'{name}/scale'))
    tree.param(f'{path}/bias', tensors.take(f'{name}/bias'))


def _flax_block(tensors: Tensors, tree: FlaxTree, prefix: str, path: str, names: dict) -> None:
    """One Flax encoder (or MAP-head) block: LayerNorms, attention and MLP under `prefix`."""
    for norm, target in names['norms']:
        _flax_norm(tensors, tree, f'{prefix}/{norm}', f'{path}/{target}')
    for projection in ('query', 'key', 'value', 'out'):
        _flax_dense(
            tensors,
            tree,
            f'{prefix}/{names["attention"]}/{projection}',
            f'{path}/attention/{projection}',
        )
    for dense, target in (('Dense_0', 'fc1'), ('Dense_1', 'fc2')):
        _flax_dense(tensors, tree, f'{prefix}/{names["mlp"]}/{dense}', f'{path}/mlp/{target}')


def big_vision_vit(
    tensors: Tensors, model: str, fields: dict[str, Any], image_size: int | None
) -> Converted:
    """big_vision ViT (pos_embedding over the patches; LayerNorm_0/1, MlpBlock_0) or the original
    google-research ViT (Transformer/posembed_input over class token and patches; LayerNorm_0/2,
    MlpBlock_3); pools 'tok', 'gap' and 'map' (MAPHead_0)."""
    tree = FlaxTree()
    _flax_dense(tensors, tree, 'embedding', 'embedding')
    original = 'Transformer/posembed_input/pos_embedding' in tensors
    names = dict(
        norms=[('LayerNorm_0', 'norm1'), ('LayerNorm_2' if original else 'LayerNorm_1', 'norm2')],
        attention=f'MultiHeadDotProductAttention_{int(original)}',
        mlp='MlpBlock_3' if original else 'MlpBlock_0',
    )
    depth = tensors.count(r'Transformer/encoderblock_(\d+)/')
    for i in range(depth):
        _flax_block(tensors, tree, f'Transformer/encoderblock_{i}', f'encoderblock_{i}', names)
    _flax_norm(tensors, tree, 'Transformer/encoder_norm', 'encoder_norm')
    pool = 'token' if 'cls' in tensors else 'map' if 'MAPHead_0/probe' in tensors else 'gap'
    if pool == 'token':
        tree.param('cls', tensors.take('cls'))
    if pool == 'map':
        tree.param('map_head/probe', tensors.take('MAPHead_0/probe'))
        head_names = dict(
            norms=[('LayerNorm_0', 'norm')], attention='MultiHeadDotProductAttention_0'
        )
        _flax_block(tensors, tree, 'MAPHead_0', 'map_head', {**head_names, 'mlp': 'MlpBlock_0'})
    if 'pre_logits/kernel' in tensors:
        _flax_dense(tensors, tree, 'pre_logits', 'pre_logits')
    _flax_dense(tensors, tree, 'head', 'head')
    table = tensors.take(
        'Transformer/posembed_input/pos_embedding' if original else 'pos_embedding'
    )
    prefix = int(pool == 'token')
    notes: list[str] = []
    if pool == 'token' and not original:  # big_vision adds no position to the class token
        table = np.concatenate([np.zeros_like(table[:, :1]), table], axis=1)
        notes.append('class-token position row set to zeros (big_vision adds none)')
    patch = tensors.shape('embedding/kernel')[0]
    table, size = _position_table(table, prefix, patch, image_size, notes)
    tree.param('pos_embedding', table)
    heads = tensors.shape('Transformer/encoderblock_0/' + names['attention'] + '/query/kernel')[1]
    inferred = _vit_fields(
        tree,
        depth,
        pool=pool,
        num_heads=heads,
        mlp_activation=BIG_VISION_GELU,
    )
    return Converted(model, {**inferred, **fields}, tree.params, {}, (size, size, 3), notes)


# Swin v1 names. timm (1.0.x) merges patches at the start of stages 1.. and names the
# classifier head.fc; the original code and older timm merge at the end of stages ..n-2 and name
# it head: 'timm_end', told apart by a 'layers.0.downsample.*' tensor (as timm's own loader does).
_SWIN_NAMES = {
    'torchvision': dict(
        patch_embed='features.0.0',
        patch_norm='features.0.2',
        stage=r'features\.(\d+)\.\d+\.attn\.qkv\.weight',
        block='features.{index}.{i}',
        merge='features.{index_before}',
        fc1='mlp.0',
        fc2='mlp.3',
        head='head',
    ),
    'timm': dict(
        patch_embed='patch_embed.proj',
        patch_norm='patch_embed.norm',
        stage=r'layers\.(\d+)\.blocks\.\d+\.attn\.qkv\.weight',
        block='layers.{index}.blocks.{i}',
        merge='layers.{index}.downsample',
        fc1='mlp.fc1',
        fc2='mlp.fc2',
        head='head.fc',
    ),
}
_SWIN_NAMES['timm_end'] = {
    **_SWIN_NAMES['timm'],
    'merge': 'layers.{index_before}.downsample',
    'head': 'head',
}


def swin(
    tensors: Tensors, model: str, fields: dict[str, Any], image_size: int | None, source: str
) -> Converted:
    """torchvision SwinTransformer v1 (features.0 patch embedding, odd features.* stages, even
    ones patch merging, norm, head) or timm's (patch_embed, layers.N.downsample and .blocks.M,
    norm, head.fc). The image size is not in the tensors: give it when it is not 224 (the
    relative-bias tables must match the windows the model uses at that size)."""
    if source == 'timm' and 'layers.0.downsample.reduction.weight' in tensors:
        source = 'timm_end'
    names = _SWIN_NAMES[source]
    tree = FlaxTree()
    tree.conv(tensors, names['patch_embed'], 'patch_embed')
    tree.layer_norm(tensors, names['patch_norm'], 'patch_embed_norm')
    stage_indices = sorted(
        {int(m.group(1)) for n in tensors.names() if (m := re.fullmatch(names['stage'], n))}
    )
    depths, heads = [], []
    window = None
    for stage, index in enumerate(stage_indices):
        if stage > 0:
            merge = names['merge'].format(index=index, index_before=index - 1)
            tree.layer_norm(tensors, f'{merge}.norm', f'merge{stage}/norm')
            tree.dense(tensors, f'{merge}.reduction', f'merge{stage}/reduction', False)
        block = names['block'].format(index=index, i='{i}')
        depth = tensors.count(rf'{re.escape(block.split("{i}")[0])}(\d+)\.')
        for i in range(depth):
            prefix, path = block.format(i=i), f'stage{stage}_block{i}'
            table = tensors.take(f'{prefix}.attn.relative_position_bias_table')
            block_heads = table.shape[1]
            tree.layer_norm(tensors, f'{prefix}.norm1', f'{path}/norm1')
            attention = f'{path}/window_attention'
            tree.param(f'{attention}/relative_position_bias/relative_position_bias_table', table)
            _attention(
                tree,
                f'{attention}/attention',
                _fused_qkv(tensors, f'{prefix}.attn.qkv.weight', f'{prefix}.attn.qkv.bias'),
                (
                    tensors.take(f'{prefix}.attn.proj.weight'),
                    tensors.take(f'{prefix}.attn.proj.bias'),
                ),
                block_heads,
            )
            tree.layer_norm(tensors, f'{prefix}.norm2', f'{path}/norm2')
            tree.dense(tensors, f'{prefix}.{names["fc1"]}', f'{path}/mlp/fc1')
            tree.dense(tensors, f'{prefix}.{names["fc2"]}', f'{path}/mlp/fc2')
            if stage == 0 and i == 0:
                window = (math.isqrt(table.shape[0]) + 1) // 2
        depths.append(depth)
        heads.append(block_heads)
    tree.layer_norm(tensors, 'norm', 'norm')
    tree.dense(tensors, names['head'], 'head')
    patch_weight = tensors.shape(f'{names["patch_embed"]}.weight')
    first = names['block'].format(index=stage_indices[0], i=0)
    inferred = dict(
        num_classes=tensors.shape(f'{names["head"]}.weight')[0],
        patch_size=patch_weight[-1],
        embed_dim=patch_weight[0],
        depths=tuple(depths),
        num_heads=tuple(heads),
        window_size=window,
        mlp_ratio=tensors.shape(f'{first}.{names["fc1"]}.weight')[0] / patch_weight[0],
        attention_scoring='dot',
    )
    size = image_size or 224
    return Converted(model, {**inferred, **fields}, tree.params, {}, (size, size, 3))
