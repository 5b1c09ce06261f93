"""PyTorch twins of the benchmarked models and their train step (CPU or CUDA, eager or
torch.compile).

Each twin has the architecture and parameter count of the project's model built from the same
`bench_common.ModelSpec` fields: ResNet (torchvision v1.5 basic or bottleneck blocks, CIFAR or
ImageNet stem, projection shortcuts, BatchNorm eps 1e-5), the pre-LN ViT (separate q/k/v
projections with biases, exact GELU, LayerNorm eps 1e-6, class token, learned positions) and the
LSTM language model (embedding -> `nn.LSTM` -> linear head). `nn.LSTM` has two bias vectors where
the project's cell has one, so the recurrent one (`bias_hh_l0`) stays at zero and frozen: the
same function and the same trainable parameters, on PyTorch's fused LSTM kernel. The train step
is the same as the JAX one: (uint8 -> [0, 1] -> standardised images), cross-entropy, backward,
SGD with momentum 0.9; bfloat16 is `torch.autocast` (parameters stay float32, as `config.dtype`
does in JAX). On CUDA, float32 products use TF32 (`torch.set_float32_matmul_precision('high')`,
cuDNN's convolutions already do), as JAX's default precision does on the GPU.
Imported only by the torch worker process (never with JAX, so its peak memory is its own).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from experiments.benchmarks.bench_common import (
    ModelSpec,
    matmul_flops,
    peak_rss_mib,
    step_summary,
    time_steps,
)


class BasicBlock(nn.Module):
    def __init__(self, in_features: int, features: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_features, features, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(features)
        self.conv2 = nn.Conv2d(features, features, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(features)
        self.shortcut = nn.Identity()
        if stride != 1 or in_features != features:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_features, features, 1, stride, bias=False), nn.BatchNorm2d(features)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class BottleneckBlock(nn.Module):
    """1x1 reduce, 3x3 (carries the stride: v1.5), 1x1 expand to 4x `features`."""

    expansion = 4

    def __init__(self, in_features: int, features: int, stride: int):
        super().__init__()
        out = features * self.expansion
        self.layers = nn.Sequential(
            nn.Conv2d(in_features, features, 1, bias=False),
            nn.BatchNorm2d(features),
            nn.ReLU(),
            nn.Conv2d(features, features, 3, stride, 1, bias=False),
            nn.BatchNorm2d(features),
            nn.ReLU(),
            nn.Conv2d(features, out, 1, bias=False),
            nn.BatchNorm2d(out),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or in_features != out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_features, out, 1, stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.layers(x) + self.shortcut(x))


class ResNet(nn.Module):
    """'cifar' stem (3x3/1 conv) or 'imagenet' stem (7x7/2 conv + 3x3/2 max pool), stages of
    basic or bottleneck blocks (width doubling, stride 2 after the first), mean pool, linear."""

    def __init__(
        self,
        num_classes: int,
        stage_sizes: tuple[int, ...],
        width: int = 64,
        stem: str = 'imagenet',
        block: str = 'basic',
        **_: Any,
    ):
        super().__init__()
        if stem == 'cifar':
            self.stem = nn.Sequential(
                nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(3, width, 7, 2, 3, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.MaxPool2d(3, 2, 1),
            )
        block_class = {'basic': BasicBlock, 'bottleneck': BottleneckBlock}[block]
        blocks, in_features = [], width
        for stage, num_blocks in enumerate(stage_sizes):
            for i in range(num_blocks):
                features = width * 2**stage
                blocks.append(block_class(in_features, features, 2 if stage > 0 and i == 0 else 1))
                in_features = features * getattr(block_class, 'expansion', 1)
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


class EncoderBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, mlp_dim: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden, eps=1e-6)
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.out = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, eps=1e-6)
        self.fc1, self.fc2 = nn.Linear(hidden, mlp_dim), nn.Linear(mlp_dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, hidden = x.shape
        y = self.norm1(x)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, tokens, self.heads, hidden // self.heads).transpose(1, 2)

        attended = F.scaled_dot_product_attention(
            heads(self.query(y)), heads(self.key(y)), heads(self.value(y))
        )
        x = x + self.out(attended.transpose(1, 2).reshape(batch, tokens, hidden))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """Patch embedding conv, class token, learned positions, pre-LN blocks, final norm, head."""

    def __init__(
        self,
        num_classes: int,
        patch_size: int,
        hidden_size: int,
        depth: int,
        num_heads: int,
        mlp_dim: int,
        image_size: int,
        **_: Any,
    ):
        super().__init__()
        self.embedding = nn.Conv2d(3, hidden_size, patch_size, patch_size)
        tokens = (image_size // patch_size) ** 2 + 1
        self.cls = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.pos_embedding = nn.Parameter(torch.randn(1, tokens, hidden_size) * 0.02)
        self.blocks = nn.Sequential(
            *(EncoderBlock(hidden_size, num_heads, mlp_dim) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(hidden_size, eps=1e-6)
        self.head = nn.Linear(hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embedding(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        return self.head(self.norm(self.blocks(x))[:, 0])


class LSTMLanguageModel(nn.Module):
    """Embedding -> one-layer LSTM (one trainable bias, as the project's cell) -> vocabulary."""

    def __init__(self, num_classes: int, embed_dim: int, hidden_size: int, **_: Any):
        super().__init__()
        self.embedding = nn.Embedding(num_classes, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden_size, batch_first=True)
        with torch.no_grad():
            self.lstm.bias_hh_l0.zero_()
        self.lstm.bias_hh_l0.requires_grad_(False)
        self.head = nn.Linear(hidden_size, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(self.embedding(tokens))[0])


def build_twin(spec: ModelSpec) -> nn.Module:
    """The PyTorch model with `spec`'s architecture."""
    if spec.net.startswith('resnet'):
        return ResNet(**spec.fields)
    if spec.net.startswith('vit'):
        return ViT(**spec.fields, image_size=spec.example_shape[0])
    if spec.net.endswith('lstm'):
        return LSTMLanguageModel(**spec.fields)
    raise ValueError(f'no PyTorch twin for {spec.net!r}')


def trainable_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def torch_train_step_row(
    spec: ModelSpec,
    *,
    dtype: str,
    mode: str,
    steps: int,
    warmup: int,
    channels_last: bool = True,
    device: str = 'cpu',
    steps_per_call: int = 1,
    seed: int = 0,
    first_step: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Times the twin's train step on a fixed synthetic batch; a benchmark row (dict).

    mode 'eager' or 'compile' (`torch.compile` of the model: forward and backward through
    AOTAutograd/Inductor; the optimiser step stays eager, as usually run). Image batches are
    channels-last by default (oneDNN's and cuDNN's faster layout). `device` 'cpu' or 'cuda';
    each timed call runs `steps_per_call` steps before waiting for the device (on a GPU one
    step's launch gaps would otherwise be timed too), and step times are per step.
    """
    if mode not in ('eager', 'compile'):
        raise ValueError(f"mode must be 'eager' or 'compile', got {mode!r}")
    if dtype not in ('float32', 'bfloat16'):
        raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    if device not in ('cpu', 'cuda'):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == 'cuda':
        torch.set_float32_matmul_precision('high')  # TF32, as JAX's default on the GPU
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = build_twin(spec).train()
    image = spec.kind == 'image'
    if image:
        height, width, channels = spec.example_shape
        pixels = torch.randint(
            0,
            256,
            (spec.batch_size, channels, height, width),
            generator=generator,
            dtype=torch.uint8,
        )
        targets = torch.randint(0, spec.num_classes, (spec.batch_size,), generator=generator)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(memory_format=layout)
        pixels = pixels.contiguous(memory_format=layout)
    else:
        pixels = torch.randint(
            4, spec.num_classes, (spec.batch_size, *spec.example_shape), generator=generator
        )
        targets = torch.randint(
            4, spec.num_classes, (spec.batch_size, *spec.example_shape), generator=generator
        )
    model, pixels, targets = model.to(device), pixels.to(device), targets.to(device)
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9
    )
    forward = torch.compile(model) if mode == 'compile' else model

    def step() -> torch.Tensor:
        inputs = (pixels.float() / 255.0 - 0.5) / 0.25 if image else pixels
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == 'bfloat16'):
            logits = forward(inputs)
        loss = F.cross_entropy(logits.float().reshape(-1, spec.num_classes), targets.reshape(-1))
        loss.backward()
        optimizer.step()
        return loss

    def run(_: int) -> torch.Tensor:
        for _ in range(steps_per_call - 1):
            step()
        return step()

    if first_step:  # announces the first step (a driver that stops a slow worker knows when)
        first_step()
    first, times, cpu = time_steps(
        run, lambda loss: float(loss.detach()), steps=steps, warmup=warmup
    )
    times, cpu = [t / steps_per_call for t in times], [t / steps_per_call for t in cpu]
    row = {
        'framework': 'torch',
        'mode': mode,
        'dtype': dtype,
        'params': trainable_params(model),
        'layout': 'channels_last' if image and channels_last else 'default',
        'threads': torch.get_num_threads(),
        'torch': torch.__version__,
        'device': device,
        'steps_per_call': steps_per_call,
        **step_summary(spec.batch_size, first, times, cpu),
    }
    # The first call of a compiled model compiles; eager's first call is a (slow) step too.
    row['compile_s'] = (
        max(first - steps_per_call * row['step_s'], 0.0) if mode == 'compile' else None
    )
    row['peak_rss_mib'] = peak_rss_mib()
    if device == 'cuda':
        row['peak_device_mib'] = torch.cuda.max_memory_allocated() / 2**20
        row['float32_matmul'] = 'tf32'
    return row


def torch_matmul_gflops(
    size: int, dtype: str, repeats: int, device: str = 'cpu', products_per_call: int = 1
) -> float:
    """PyTorch's achieved GFLOP/s on a (size x size) product, median of `repeats` calls of
    `products_per_call` products each (reference for the JAX peak: oneDNN/MKL or cuBLAS against
    XLA's kernels; float32 as TF32 on CUDA, like the rows). Random operands: zeros run faster
    on some GPUs."""
    torch_dtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16}[dtype]
    if device == 'cuda':
        torch.set_float32_matmul_precision('high')
    a = torch.randn(size, size).to(device=device, dtype=torch_dtype)
    b = torch.randn(size, size).to(device=device, dtype=torch_dtype)

    def products(_: int) -> torch.Tensor:
        return [a @ b for _ in range(products_per_call)][-1]

    _, times, _ = time_steps(products, lambda c: float(c[0, 0]), steps=repeats, warmup=1)
    seconds = step_summary(1, 0.0, times)['step_s'] / products_per_call
    return matmul_flops(size) / seconds / 1e9


def torch_peak_gflops(
    size: int, dtype: str, budget_s: float = 60.0, probe: int = 256
) -> tuple[float, int]:
    """(GFLOP/s, side): PyTorch's rate on a (size x size) product, or on a smaller power-of-two
    side where its kernels are so slow (bfloat16 without AVX-512: a reference loop) that six
    products of `size` would take more than `budget_s` at the rate of a `probe`-side one."""
    rate = torch_matmul_gflops(probe, dtype, repeats=3) * 1e9
    while size > probe and 6 * matmul_flops(size) / rate > budget_s:
        size //= 2
    return torch_matmul_gflops(size, dtype, 5), size
