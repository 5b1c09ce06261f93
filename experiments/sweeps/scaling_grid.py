"""The grid of a scaling study of ConvNets against Vision Transformers: model families with
their size ladders and recipes, presets (data, budgets, hardware), and the config of each run.

`experiments/scaling.py` is the config file that builds one run from it;
`experiments/sweeps/scaling_study.py` runs a whole grid and analyses it. Every budget is its own
full warmup + cosine schedule (train/optim.py), never a truncated longer run, and the learning
rate is tuned per budget on a x2 grid, as in Smith et al. 2023. A preset's grid is where a
study starts: experiments/sweeps/scaling_plan.py extends the rates of a cell whose best rate is
at the grid's edge, and the budgets while the compute-optimal one is the longest, up to the
preset's `max_lr_steps` and `max_epochs`.
"""

import dataclasses
import math
from typing import Any

import ml_collections

from train.config import default_config, model_config


@dataclasses.dataclass(frozen=True)
class Size:
    """One rung of a family's size ladder: a registered model and the fields it overrides."""

    model: str
    fields: dict[str, Any]
    description: str


@dataclasses.dataclass(frozen=True)
class Family:
    """A model family with its size ladder (smallest first) and training recipe."""

    name: str
    kind: str  # 'convnet' or 'vit': the two sides of the comparison
    sizes: dict[str, Size]
    optimizer: dict[str, Any]  # config.optimizer keys other than the learning rate
    learning_rates: tuple[float, ...]  # a x2 grid, smallest first
    warmup_fraction: float  # linear warmup, as a fraction of each budget


@dataclasses.dataclass(frozen=True)
class Preset:
    """A whole study: data, budgets, families, and the machine it is meant for."""

    name: str
    dataset: str
    train_split: str
    eval_split: str
    image_shape: tuple[int, int, int]  # (H, W, C) of the prepared images
    num_classes: int
    batch_size: int
    eval_batch_size: int
    epochs: tuple[float, ...]  # epoch budgets, each its own schedule
    families: dict[str, Family]
    default_families: tuple[str, ...]
    dtype: str
    log_every_steps: int
    checkpoint_every_steps: int
    eval_every_steps: int  # -1: once per epoch (and always at the end)
    launcher: str  # 'local' (one process) or 'tpu' (gcloud ssh to every worker of a slice)
    data_dir: str = ''  # '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
    # Cores behind one JAX device for core-hours; 0 = from the platform the run reports.
    # TPU v4 (Smith et al.'s unit): one device per chip, two TensorCores each.
    cores_per_device: int = 0
    # Caps of the sweep's extensions (experiments/sweeps/scaling_plan.py): factor-2 steps a
    # cell's rates may go beyond the family's grid on either side, and the longest epoch budget
    # (0: none beyond `epochs`).
    max_lr_steps: int = 0
    max_epochs: float = 0.0


def lr_grid(lowest: float, points: int) -> tuple[float, ...]:
    """`points` learning rates a factor 2 apart from `lowest` up."""
    return tuple(lowest * 2.0**k for k in range(points))


def _resnet_width(width: int, stages: tuple[int, ...] = (1, 1, 1)) -> Size:
    return Size(
        'resnet20',
        {'stage_sizes': stages, 'width': width, 'stem': 'cifar'},
        f'ResNet-{2 + 2 * sum(stages)}, width {width}',
    )


def _vit(hidden: int, depth: int, heads: int, patch: int, mlp_ratio: int = 4) -> Size:
    return Size(
        'vit_ti16',
        {
            'patch_size': patch,
            'hidden_size': hidden,
            'depth': depth,
            'num_heads': heads,
            'mlp_dim': mlp_ratio * hidden,
        },
        f'ViT width {hidden}, depth {depth}, {heads} heads, patch {patch}',
    )


def _nfnet_small(multiplier: int, widths: tuple[int, ...], group_width: int) -> Size:
    depths = tuple(multiplier * d for d in (1, 1, 2, 1))
    return Size(
        'nfnet_f0',
        {
            'stem': 'small',
            'depths': depths,
            'widths': widths,
            'group_width': group_width,
            'drop_path_rate': 0.0,
            'dropout_rate': 0.0,
        },
        f'NFNet depths {depths}, widths {widths}',
    )


def _convnext_small(dims: tuple[int, ...], depths: tuple[int, ...] = (1, 1, 1, 1)) -> Size:
    return Size(
        'convnext_t',
        {'stem': 'small', 'depths': depths, 'dims': dims, 'drop_path_rate': 0.0},
        f'ConvNeXt depths {depths}, dims {dims}',
    )


def _nfnet_one_group(width: int, depths: tuple[int, ...]) -> Size:
    """An NFNet of `depths` stages all `width` wide whose 3x3 convolutions are one group (the
    group width is the bottleneck width, as in F0's first stage): at these widths, groups of a
    few channels would leave each convolution too little work per group."""
    return Size(
        'nfnet_f0',
        {
            'stem': 'small',
            'depths': depths,
            'widths': (width,) * len(depths),
            'group_width': width // 2,
            'drop_path_rate': 0.0,
            'dropout_rate': 0.0,
        },
        f'NFNet depths {depths}, width {width}, one group',
    )


# --- cpu_tiny: Fashion-MNIST 28x28 on the 2-core CPU --------------------------------------------
# Ladders of about x2 training FLOPs per rung (XLA's counts at batch 128: NFNet 0.7, 1.2, 2.0,
# 4.7 GFLOPs per step; ResNet 0.5, 1.8, 3.9, 6.8; ViT 0.5, 1.4, 4.2, 9.3, 14), sized so that
# the default 54 runs (NFNet and ViT) take about 15 minutes here. The ViT ladder has five
# rungs, like Ti/S/B/L/H: with four, its frontier had four points, too few to fit the
# four-parameter saturating law. The learning-rate pairs were bracketed by probe runs at the
# middle sizes (0.25 and 0.5 epochs, rates x2 apart): ResNet w8 was best at 0.4 of
# 0.05...1.6, ViT s at 0.008 of 0.001...0.032; short budgets favour high rates. The ConvNeXt
# ladder takes the ViT's rates (AdamW) unprobed.
_CPU_FAMILIES = {
    'resnet': Family(
        'resnet',
        'convnet',
        {f'w{w}': _resnet_width(w) for w in (4, 8, 12, 16)},
        optimizer={'name': 'momentum', 'momentum': 0.9, 'weight_decay': 5e-4},
        learning_rates=lr_grid(0.2, 2),
        warmup_fraction=0.1,
    ),
    'vit': Family(
        'vit',
        'vit',
        {
            'xs': _vit(16, 2, 1, 4),
            'ti': _vit(32, 2, 2, 4),
            's': _vit(48, 3, 3, 4),
            'm': _vit(64, 4, 4, 4),
            'b': _vit(80, 4, 4, 4),
        },
        optimizer={'name': 'adamw', 'weight_decay': 0.05, 'grad_clip_norm': 1.0},
        learning_rates=lr_grid(4e-3, 2),
        warmup_fraction=0.1,
    ),
    # One-group NFNet rungs from the cpu_small ladder spanning the ResNet's compute; the rates
    # bracket cpu_small's best at these sizes (0.2-0.4 at 0.5-1 epochs).
    'nfnet': Family(
        'nfnet',
        'convnet',
        {
            f'w{w}-{sum(d)}': _nfnet_one_group(w, d)
            for w, d in ((8, (1, 1, 1)), (12, (1, 1, 1)), (16, (1, 1, 2)), (24, (1, 2, 3)))
        },
        optimizer={'name': 'nesterov', 'momentum': 0.9, 'weight_decay': 5e-5, 'agc_clip': 0.1},
        learning_rates=lr_grid(0.2, 2),
        warmup_fraction=0.1,
    ),
    'convnext': Family(
        'convnext',
        'convnet',
        {f'd{d}': _convnext_small((d, 2 * d, 4 * d, 8 * d)) for d in (8, 12, 16, 24)},
        optimizer={'name': 'adamw', 'weight_decay': 0.05, 'grad_clip_norm': 1.0},
        learning_rates=lr_grid(4e-3, 2),
        warmup_fraction=0.1,
    ),
}


# --- cpu_small: the study that can conclude something on the 2-core CPU ------------------------
# NFNet-style ConvNets (scaled weight standardisation, no normalisation layers, SGD with
# Nesterov momentum and adaptive gradient clipping 0.1) against ViTs, six sizes each, about
# x1.5-2 training FLOPs per rung, the first stage one block deep as in F0. Learning rates: the
# ViT grid is centred on cpu_tiny's probed best (0.008 at 0.25-1 epochs); the NFNet grid takes
# the ResNet's; the sweep extends both where a cell's best rate is at an edge.
_SMALL_FAMILIES = {
    'nfnet': Family(
        'nfnet',
        'convnet',
        {
            f'w{w}-{sum(d)}': _nfnet_one_group(w, d)
            for w, d in (
                (6, (1, 1, 1)),
                (8, (1, 1, 1)),
                (12, (1, 1, 1)),
                (16, (1, 1, 2)),
                (20, (1, 2, 2)),
                (24, (1, 2, 3)),
            )
        },
        optimizer={'name': 'nesterov', 'momentum': 0.9, 'weight_decay': 5e-5, 'agc_clip': 0.1},
        learning_rates=lr_grid(0.1, 3),
        warmup_fraction=0.1,
    ),
    'vit': Family(
        'vit',
        'vit',
        {
            f'w{hidden}-{depth}': _vit(hidden, depth, heads, 4)
            for hidden, depth, heads in (
                (12, 1, 1),
                (16, 2, 1),
                (24, 2, 2),
                (32, 2, 2),
                (48, 3, 3),
                (64, 4, 4),
            )
        },
        optimizer={'name': 'adamw', 'weight_decay': 0.05, 'grad_clip_norm': 1.0},
        learning_rates=lr_grid(4e-3, 3),
        warmup_fraction=0.1,
    ),
}

# --- gpu_h100: the same comparison wider, on all of Fashion-MNIST, for one H100 ----------------
# NFNets F0-style (stage widths w, 2w, 3w, 4w, first stage one group) with one or two blocks per
# stage unit; ViTs up to width 128. Learning rates as cpu_small's, the ViT's halved for the
# wider models.
_GPU_FAMILIES = {
    'nfnet': Family(
        'nfnet',
        'convnet',
        {
            f'f{m - 1}-w{w}': _nfnet_small(m, (w, 2 * w, 3 * w, 4 * w), w // 2)
            for m, w in ((1, 16), (1, 32), (2, 32), (2, 48))
        },
        optimizer={'name': 'nesterov', 'momentum': 0.9, 'weight_decay': 5e-5, 'agc_clip': 0.1},
        learning_rates=lr_grid(0.1, 3),
        warmup_fraction=0.1,
    ),
    'vit': Family(
        'vit',
        'vit',
        {
            'ti': _vit(32, 2, 2, 4),
            's': _vit(64, 4, 4, 4),
            'm': _vit(96, 6, 4, 4),
            'b': _vit(128, 6, 4, 4),
        },
        optimizer={'name': 'adamw', 'weight_decay': 0.05, 'grad_clip_norm': 1.0},
        learning_rates=lr_grid(2e-3, 3),
        warmup_fraction=0.1,
    ),
}

# --- TPU presets: Smith et al.'s families and grid at 64 px --------------------------------------
# NFNet F-variants: depths n·(1, 2, 6, 3) for F(n-1) (F7 is n = 8), widths (256, 512, 1536,
# 1536); Smith et al. pre-train F0, F1, F3, F3+, F7, F7+ (the '+' variants have no published
# definition, so they are left out). The recipe is the NFNet paper's at batch 4096: SGD with
# Nesterov momentum, adaptive gradient clipping 0.01 (head excluded), weight decay 2e-5.
_TPU_FAMILIES = {
    'nfnet': Family(
        'nfnet',
        'convnet',
        {
            'f0': Size('nfnet_f0', {'stem': 'small'}, 'NFNet-F0'),
            'f1': Size('nfnet_f1', {'stem': 'small'}, 'NFNet-F1'),
            'f3': Size('nfnet_f3', {'stem': 'small'}, 'NFNet-F3'),
            'f7': Size('nfnet_f6', {'stem': 'small', 'depths': (8, 16, 48, 24)}, 'NFNet-F7'),
        },
        optimizer={'name': 'nesterov', 'momentum': 0.9, 'weight_decay': 2e-5, 'agc_clip': 0.01},
        learning_rates=lr_grid(0.4, 4),
        warmup_fraction=0.05,
    ),
    'resnet': Family(
        'resnet',
        'convnet',
        {
            name: Size(name, {'stem': 'cifar'}, name)
            for name in ('resnet50', 'resnet101', 'resnet152')
        },
        optimizer={'name': 'nesterov', 'momentum': 0.9, 'weight_decay': 5e-5},
        learning_rates=lr_grid(0.4, 4),
        warmup_fraction=0.05,
    ),
    'convnext': Family(
        'convnext',
        'convnet',
        {s: Size(f'convnext_{s}', {'stem': 'small'}, f'ConvNeXt-{s.upper()}') for s in 'tsbl'},
        optimizer={'name': 'adamw', 'weight_decay': 0.05, 'grad_clip_norm': 1.0},
        learning_rates=lr_grid(5e-4, 4),
        warmup_fraction=0.05,
    ),
    # ViT Ti/S/B/L/H widths, depths and heads at patch 4 on 64 px: 16x16 = 256 tokens, close to
    # the 196 of /16 at 224 px. ViT paper pre-training recipe: Adam(W), weight decay 0.1,
    # gradient clipping at norm 1.
    'vit': Family(
        'vit',
        'vit',
        {
            s: _vit(h, d, n, 4)
            for s, (h, d, n) in {
                'ti': (192, 12, 3),
                's': (384, 12, 6),
                'b': (768, 12, 12),
                'l': (1024, 24, 16),
                'h': (1280, 32, 16),
            }.items()
        },
        optimizer={'name': 'adamw', 'weight_decay': 0.1, 'grad_clip_norm': 1.0, 'b2': 0.999},
        learning_rates=lr_grid(2.5e-4, 4),
        warmup_fraction=0.05,
    ),
}

PRESETS: dict[str, Preset] = {
    'cpu_tiny': Preset(
        # Half the test split is held out: evaluating 10,000 images cost as much as training a
        # 0.25-epoch budget; 5,000 keep the standard error of the loss near 0.01.
        name='cpu_tiny',
        dataset='fashion_mnist',
        train_split='train[:20%]',
        eval_split='test[:50%]',
        image_shape=(28, 28, 1),
        num_classes=10,
        batch_size=128,
        eval_batch_size=1000,
        epochs=(0.25, 0.5, 1.0),
        families=_CPU_FAMILIES,
        default_families=('nfnet', 'vit'),
        dtype='float32',
        log_every_steps=25,
        checkpoint_every_steps=50,
        # Only the final held-out loss enters the study: evaluate once, at the end.
        eval_every_steps=1_000_000,
        launcher='local',
    ),
    # NFNet-style ConvNets (scaled down F0-style, AGC on) against ViTs, 6 sizes each, on the
    # 2-core CPU: 6 sizes x 3 budgets x 3 rates = 54 runs a family, then the planned extensions
    # (rates up to 2 factors of 2 beyond the grid, budgets up to 2 epochs). Sized with
    # `scaling_study --estimate` (XLA FLOP counts and a probe of each family's middle size):
    # under 3 hours even if every cell's rates were extended twice (docs/scaling.md). Expected:
    # ~180 runs in ~1.5 h on 2 cores, 9 frontier points a family
    # (docs/scaling_cpu_small_report.md).
    'cpu_small': Preset(
        name='cpu_small',
        dataset='fashion_mnist',
        train_split='train[:20%]',
        eval_split='test[:50%]',
        image_shape=(28, 28, 1),
        num_classes=10,
        batch_size=128,
        eval_batch_size=1000,
        epochs=(0.25, 0.5, 1.0),
        families=_SMALL_FAMILIES,
        default_families=('nfnet', 'vit'),
        dtype='float32',
        log_every_steps=25,
        checkpoint_every_steps=50,
        eval_every_steps=1_000_000,
        launcher='local',
        max_lr_steps=2,
        max_epochs=2.0,
    ),
    # The same comparison on one H100 in about 10 minutes, an estimate (not measured): 4 sizes x
    # 3 budgets x 3 rates x 2 families = 72 runs of 117-468 steps at batch 256, where models
    # this small are bound by each run's compilation (~5 s) and step latency (a few ms).
    'gpu_h100': Preset(
        name='gpu_h100',
        dataset='fashion_mnist',
        train_split='train',
        eval_split='test',
        image_shape=(28, 28, 1),
        num_classes=10,
        batch_size=256,
        eval_batch_size=2000,
        epochs=(0.5, 1.0, 2.0),
        families=_GPU_FAMILIES,
        default_families=('nfnet', 'vit'),
        dtype='float32',
        log_every_steps=50,
        checkpoint_every_steps=500,
        eval_every_steps=1_000_000,
        launcher='local',
        max_lr_steps=1,
        max_epochs=4.0,
    ),
    'tpu_imagenet': Preset(
        name='tpu_imagenet',
        dataset='imagenet_resized/64x64',
        train_split='train',
        eval_split='validation',
        image_shape=(64, 64, 3),
        num_classes=1000,
        batch_size=4096,
        eval_batch_size=4096,
        epochs=(2.5, 5.0, 10.0, 20.0, 40.0, 80.0),
        families=_TPU_FAMILIES,
        default_families=('nfnet', 'vit'),
        dtype='bfloat16',
        log_every_steps=100,
        checkpoint_every_steps=1000,
        eval_every_steps=-1,
        launcher='tpu',
        cores_per_device=2,
        max_lr_steps=2,
        max_epochs=160.0,
    ),
}


# What a run of the grid has come to (the sweep driver records it; the report reads it).
FINISHED, DIVERGED, INTERRUPTED, PENDING = 'finished', 'diverged', 'interrupted', 'pending'


def size_key(preset: Preset, family: str, size: str) -> str:
    """The key of one model size in a study's flops.json (FLOPs depend on batch and input)."""
    h, w, c = preset.image_shape
    return f'{preset.name}/{family}/{size}/batch{preset.batch_size}/{h}x{w}x{c}'


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One point of the grid."""

    preset: str
    family: str
    size: str
    epochs: float
    learning_rate: float

    @property
    def run_id(self) -> str:
        return f'{self.family}-{self.size}_e{self.epochs:g}_lr{self.learning_rate:g}'

    @property
    def config_arg(self) -> str:
        """The `:arg` of `--config=experiments/scaling.py:ARG` for this run."""
        return (
            f'preset={self.preset},family={self.family},size={self.size},'
            f'epochs={self.epochs:g},lr={self.learning_rate:g}'
        )


def get_preset(preset: str | Preset) -> Preset:
    if isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        raise ValueError(f'unknown preset {preset!r}; valid: {sorted(PRESETS)}')
    return PRESETS[preset]


def grid(
    preset: str | Preset,
    families: tuple[str, ...] | list[str] | None = None,
    epochs: tuple[float, ...] | list[float] | None = None,
) -> list[RunSpec]:
    """Every run of the study: families x sizes x epoch budgets x learning rates, smallest
    budgets and models first (so an interrupted sweep has the cheap end of every curve)."""
    preset = get_preset(preset)
    families = tuple(families or preset.default_families)
    unknown = [f for f in families if f not in preset.families]
    if unknown:
        raise ValueError(
            f'unknown famil{"ies" if len(unknown) > 1 else "y"} {unknown} in preset '
            f'{preset.name!r}; valid: {sorted(preset.families)}'
        )
    budgets = tuple(epochs or preset.epochs)
    runs = []
    for budget in budgets:
        for family_name in families:
            family = preset.families[family_name]
            for size in family.sizes:
                for lr in family.learning_rates:
                    runs.append(RunSpec(preset.name, family_name, size, float(budget), lr))
    return runs


def run_config(
    preset: str | Preset, family: str, size: str, epochs: float, learning_rate: float
) -> ml_collections.ConfigDict:
    """The config of one run of the study."""
    preset = get_preset(preset)
    if family not in preset.families:
        raise ValueError(
            f'unknown family {family!r} in preset {preset.name!r}; valid: {sorted(preset.families)}'
        )
    spec = preset.families[family]
    if size not in spec.sizes:
        raise ValueError(f'unknown size {size!r} of family {family!r}; valid: {list(spec.sizes)}')
    if not epochs > 0 or not learning_rate > 0:
        raise ValueError(f'epochs and learning rate must be > 0, got {epochs}, {learning_rate}')
    rung = spec.sizes[size]
    config = default_config()
    config.dataset.name = preset.dataset
    config.dataset.data_dir = preset.data_dir
    config.dataset.train_split = preset.train_split
    config.dataset.eval_split = preset.eval_split
    config.model = model_config(rung.model, **rung.fields)
    config.batch_size = preset.batch_size
    config.eval_batch_size = preset.eval_batch_size
    config.num_epochs = float(epochs)
    config.dtype = preset.dtype
    for key, value in spec.optimizer.items():
        config.optimizer[key] = value
    config.optimizer.learning_rate = float(learning_rate)
    # Each budget is its own complete schedule: warmup, then cosine to zero at its last step.
    config.schedule.name = 'warmup_cosine'
    config.schedule.warmup_epochs = spec.warmup_fraction * float(epochs)
    config.schedule.end_factor = 0.0
    config.log_every_steps = preset.log_every_steps
    config.checkpoint_every_steps = preset.checkpoint_every_steps
    config.eval_every_steps = preset.eval_every_steps
    config.keep_checkpoints = 2
    config.pictures = False  # hundreds of runs: the study's own plots are what matter
    return config


def run_spec(
    preset: str | Preset = 'cpu_tiny',
    family: str = '',
    size: str = '',
    epochs: float = 0.0,
    learning_rate: float = 0.0,
) -> RunSpec:
    """One run of a preset's grid; parts left empty (or 0) take the preset's first family, its
    smallest size, its shortest budget and its lowest learning rate."""
    preset = get_preset(preset)
    family = family or preset.default_families[0]
    if family not in preset.families:
        raise ValueError(
            f'unknown family {family!r} in preset {preset.name!r}; valid: {sorted(preset.families)}'
        )
    size = size or next(iter(preset.families[family].sizes))
    epochs = epochs or preset.epochs[0]
    learning_rate = learning_rate or preset.families[family].learning_rates[0]
    if not (math.isfinite(epochs) and math.isfinite(learning_rate)):
        raise ValueError(
            f'epochs and learning rate must be finite numbers, got {epochs}, {learning_rate}'
        )
    return RunSpec(preset.name, family, size, float(epochs), float(learning_rate))
