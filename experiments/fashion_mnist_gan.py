"""DCGAN on Fashion-MNIST (28x28): non-saturating loss, Adam 2e-4 with β1 = 0.5 for both networks,
one D update per G update, a fixed-noise sample grid at every evaluation.

Command:
  python -m train.main --config=experiments/fashion_mnist_gan.py \
      --workdir=workdirs/fashion_mnist_gan
(`--config=experiments/fashion_mnist_gan.py:loss=hinge` trains with the hinge loss.) The same-budget
comparison with the DDPM, with Fréchet distances and coverage, is
`python -m experiments.sweeps.generative_comparison` (it sets num_steps from the budget).
Hardware: 2-core x86-64 CPU shared with other jobs, one XLA device.
Time: 0.26 s per step (batch 64, measured), so the 2,400 steps take about 11 min with
evaluations; the comparison's 8-TFLOP budget gave it 2,889 steps (775 s).
Expected: tops and pullovers in pictures/samples.png after ~700 steps, every class by ~2,900;
measured at 2,889 steps: Fréchet distance 47.1 in the classifier's features (real-vs-real floor
1.6), all 10 classes covered (docs/generative_comparison.md).
"""

from train.config import check_arg_choice, default_config, model_config, parse_arg
from train.tasks.gan import LOSSES


def get_config(arg: str = ''):
    loss = parse_arg(arg, loss='non_saturating').loss
    check_arg_choice('loss', loss, LOSSES)
    config = default_config()
    config.task = 'gan'
    config.dataset.name = 'fashion_mnist'
    # A 2,000-image slice of the test split: D's eval losses are a progress signal, not a score.
    config.dataset.eval_split = 'test[:2000]'
    config.model = model_config(
        'dcgan_28', latent_dim=64, generator_width=32, discriminator_width=32
    )
    config.batch_size = 64
    config.eval_batch_size = 500
    config.num_steps = 2400
    # Both networks train with this optimiser (the DCGAN paper's: a shorter momentum memory,
    # β1 = 0.5, is steadier against a moving opponent).
    config.optimizer.name = 'adam'
    config.optimizer.learning_rate = 2e-4
    config.optimizer.b1 = 0.5
    config.schedule.name = 'constant'
    config.gan.loss = loss
    config.log_every_steps = 50
    config.eval_every_steps = 400
    config.checkpoint_every_steps = 400
    return config
