"""Scaling studies of ConvNets against Vision Transformers: one run of the grid per config.

Command (one run; every argument is optional: a missing one takes the preset's first family,
its smallest size, its shortest budget or its lowest learning rate):
  python -m train.main \
      --config=experiments/scaling.py:preset=cpu_tiny,family=vit,size=s,epochs=0.5,lr=0.008 \
      --workdir=workdirs/scaling_cpu_tiny/runs/vit-s_e0.5_lr0.008
The whole grid, its results file, fits, plots and report:
  python -m experiments.sweeps.scaling_study --preset=cpu_tiny --workdir=workdirs/scaling_cpu_tiny
Presets (their families, ladders and budgets are in experiments/sweeps/scaling_grid.py; the
sweep extends rates and budgets past the grid up to each preset's caps):
  cpu_small     Fashion-MNIST as cpu_tiny; NFNet-style ConvNets (F0-style, scaled down, one
                group, AGC) vs ViTs, 6 sizes each x budgets 0.25/0.5/1 x 3 rates = 108 runs,
                then extensions (rates 2 factors of 2 past the grid, budgets up to 2 epochs).
                Hardware: the 2-core CPU; estimated 41-52 min for the grid, 1.9-2.4 h at
                most with every extension (scaling_study --estimate; docs/scaling.md).
  gpu_h100      all of Fashion-MNIST, wider NFNets vs ViTs, 4 sizes x 3 budgets x 3 rates =
                72 runs at batch 256 for one H100, about 10 minutes (an estimate).
  cpu_tiny      Fashion-MNIST 28x28, 20% of the train split, half the test split held out;
                NFNet-style ConvNets (4 of cpu_small's one-group rungs, AGC) vs ViT by
                width/depth/heads (5 sizes) x epoch budgets 0.25/0.5/1 x 2 learning rates = 54
                runs (ResNet-8 and ConvNeXt ladders with --families=resnet,convnext,...).
                Hardware: a 2-core CPU, one XLA device; 14 min measured.
  tpu_imagenet  ImageNet-1k at 64x64 (TFDS imagenet_resized/64x64, prepared by the user),
                NFNet F0/F1/F3/F7, ResNet-50/101/152, ConvNeXt T/S/B/L and ViT Ti/S/B/L/H at
                patch 4 (256 tokens) x 6 epoch budgets 2.5...80 x 4 learning rates a factor 2
                apart; batch 4096, bfloat16, a Cloud TPU v4 slice. 64 px, not 224: the grid's
                ~200 runs x 80 epochs at 224 px would cost ~12x the FLOPs (ViT tokens grow with
                the pixel count), beyond a study's budget; a 224 px run of one model is
                experiments/imagenet_resnet50.py or imagenet_vit.py (the JPEG input path).
Expected: held-out loss falls with compute on both frontiers; the measured cpu_tiny report, its
fits and plots are in docs/scaling.md.
"""

from experiments.sweeps import scaling_grid
from train.config import ConfigError, parse_arg


def get_config(arg: str = ''):
    args = parse_arg(arg, preset='cpu_tiny', family='', size='', epochs=0.0, lr=0.0)
    try:
        spec = scaling_grid.run_spec(args.preset, args.family, args.size, args.epochs, args.lr)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    return scaling_grid.run_config(
        spec.preset, spec.family, spec.size, spec.epochs, spec.learning_rate
    )
