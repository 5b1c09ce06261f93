"""DDPM on Fashion-MNIST (28x28): a 16-wide U-Net (28 -> 14 -> 7, no attention) predicting ε under
the linear schedule (T = 1000), Adam 1e-3 with cosine decay, gradient clipping at 1, an EMA of the
weights for sampling, and a DDIM-50 sample grid (fixed x_T) at every evaluation.

Command:
  python -m train.main --config=experiments/fashion_mnist_ddpm.py \
      --workdir=workdirs/fashion_mnist_ddpm
(`:noise_schedule=cosine` uses Nichol & Dhariwal's cosine schedule.) The same-budget comparison
with the DCGAN, with Fréchet distances and coverage, is
`python -m experiments.sweeps.generative_comparison`
(it sets num_steps from the budget).
Hardware: 2-core x86-64 CPU shared with other jobs, one XLA device.
Time: 1.0 s per step (batch 64, measured), so the 1,200 steps take about 22 min with
evaluations; the comparison's 8-TFLOP budget gave it 469 steps (563 s).
Expected: eval ε-loss from 1.0 (the zero-initialised output) to 0.057 by step 351 (measured);
rough garment shapes in pictures/samples.png; measured at 469 steps: Fréchet distance 60.6
with DDIM-50 samples (floor 1.6), docs/generative_comparison.md.
"""

from nets.models.diffusion import NOISE_SCHEDULES
from train.config import check_arg_choice, default_config, model_config, parse_arg


def get_config(arg: str = ''):
    noise_schedule = parse_arg(arg, noise_schedule='linear').noise_schedule
    check_arg_choice('noise_schedule', noise_schedule, NOISE_SCHEDULES)
    config = default_config()
    config.task = 'diffusion'
    config.dataset.name = 'fashion_mnist'
    # A 2,000-image slice of the test split: each eval image costs a U-Net pass.
    config.dataset.eval_split = 'test[:2000]'
    config.model = model_config('ddpm_unet_small')
    config.batch_size = 64
    config.eval_batch_size = 500
    config.num_steps = 1200
    config.optimizer.name = 'adam'
    config.optimizer.learning_rate = 1e-3
    config.optimizer.grad_clip_norm = 1.0  # as Ho et al.
    config.schedule.name = 'warmup_cosine'
    config.schedule.warmup_epochs = 0.05  # 47 steps
    config.diffusion.noise_schedule = noise_schedule
    config.diffusion.timesteps = 1000
    # Samples come from the parameters' moving average. Ho et al. use 0.9999 over 800k steps;
    # a run of ~1,000 steps needs a shorter memory.
    config.ema_decay = 0.995
    config.diffusion.sampler = 'ddim'
    config.diffusion.sample_steps = 50
    config.log_every_steps = 50
    config.eval_every_steps = 300
    config.checkpoint_every_steps = 300
    return config
