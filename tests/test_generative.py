"""Generative models: DCGAN shapes, the GAN losses and alternating step, batch-norm convention,
GAN checkpoint/resume through the trainer; DDPM schedules, forward process, loss, DDPM/DDIM
samplers; the Fréchet distance and its floor; tiny end-to-end trainings on digits."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import data
import nets
import nets.models.diffusion as diffusion
import nets.models.gan
from experiments.analysis import frechet
from tests.nets_harness import fast_jit
from train import loop
from train.checkpointing import load_checkpoint
from train.config import ConfigError, default_config, model_config, validate
from train.sharding import host_to_global, make_mesh
from train.steps import init_train_state, make_train_step
from train.tasks import task_from_config
from train.tasks.gan import build_gan_optimizer, discriminator_loss, generator_loss


@pytest.fixture(autouse=True, scope='module')
def rbg_keys():
    """'rbg' keys everywhere in this module, the trainer's included: XLA spends most of these
    tests' time compiling threefry for every initialiser (see tests/nets_harness.py); nothing
    here depends on which generator draws the numbers."""
    previous = jax.config.jax_default_prng_impl
    jax.config.update('jax_default_prng_impl', 'rbg')
    yield
    jax.config.update('jax_default_prng_impl', previous)


# --------------------------------------------------------------------------- DCGAN networks


@pytest.mark.parametrize('size,channels,stages', [(8, 1, 2), (28, 1, 2), (64, 3, 4)])
def test_dcgan_shapes_and_output_range(size, channels, stages):
    model = nets.create(
        'dcgan',
        image_size=size,
        channels=channels,
        latent_dim=16,
        generator_width=4,
        discriminator_width=4,
    )
    assert nets.models.gan.dcgan_layout(size)[1] == stages
    z = jax.random.normal(jax.random.key(0), (3, 16))

    def run(z):
        variables = model.init(jax.random.key(1), z, train=True)
        images = model.apply(variables, 5.0 * z, method='generate')
        return variables, images, model.apply(variables, images, method='discriminate')

    variables, images, logits = fast_jit(run)(z)
    assert set(variables['params']) == {'generator', 'discriminator'}
    assert images.shape == (3, size, size, channels) and images.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(images))) <= 1.0  # tanh
    assert logits.shape == (3,)
    with pytest.raises(ValueError, match='image_size'):
        nets.create('dcgan', image_size=7)


def test_generative_config_blocks_are_validated():
    for key, value, message in (
        ('gan.loss', 'wasserstein', "'wasserstein'.*'hinge'"),
        ('gan.d_steps', 0, 'd_steps must be > 0'),
        ('diffusion.noise_schedule', 'sigmoid', "'sigmoid'.*'cosine'"),
        ('diffusion.sample_steps', 2000, 'sample_steps must be in'),
    ):
        config = default_config()
        block, leaf = key.split('.')
        config.task = block  # each block is read (and checked) by its own task
        config[block][leaf] = value
        with pytest.raises(ConfigError, match=message):
            validate(config)


def test_a_task_block_of_another_task_is_an_error_not_ignored():
    config = default_config()  # task 'classify'
    config.gan.loss = 'hinge'
    with pytest.raises(ConfigError, match="config.gan.loss applies only to config.task='gan'"):
        validate(config)


def test_gan_networks_train_with_the_configured_optimizer(digits_dir):
    """--config.optimizer.* applies to both networks (scaled by the per-network multipliers)."""
    config = gan_config(
        digits_dir,
        **{
            'optimizer.learning_rate': 1e-3,
            'optimizer.b1': 0.5,
            'gan.discriminator_lr_multiplier': 2.0,
        },
    )
    validate(config)
    tx, schedule = build_gan_optimizer(config, steps_per_epoch=10, total_steps=10)
    assert float(schedule(0)) == pytest.approx(1e-3)
    params = {'w': jnp.ones(3)}
    grads = {'w': jnp.ones(3)}
    for network, lr in (('generator', 1e-3), ('discriminator', 2e-3)):
        updates, _ = tx.optimizers[network].update(
            grads, tx.optimizers[network].init(params), params, value=jnp.asarray(0.0)
        )
        np.testing.assert_allclose(updates['w'], -lr, rtol=1e-4)  # Adam's first step: -lr


# --------------------------------------------------------------------------- GAN losses


def test_gan_losses_match_hand_computed_values():
    real, fake = jnp.array([2.0, -1.0]), jnp.array([0.5, -3.0])
    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731  -log σ(-v)
    d_ns = (softplus(-2.0) + softplus(1.0)) / 2 + (softplus(0.5) + softplus(-3.0)) / 2
    g_ns = (softplus(-0.5) + softplus(3.0)) / 2
    assert float(discriminator_loss(real, fake, 'non_saturating')) == pytest.approx(d_ns, 1e-6)
    assert float(generator_loss(fake, 'non_saturating')) == pytest.approx(g_ns, 1e-6)
    # hinge: D = mean(max(0, 1 - [2, -1])) + mean(max(0, 1 + [0.5, -3])) = 1 + 0.75; G = 1.25.
    assert float(discriminator_loss(real, fake, 'hinge')) == pytest.approx(1.75)
    assert float(generator_loss(fake, 'hinge')) == pytest.approx(1.25)
    with pytest.raises(ValueError, match='hinge'):
        generator_loss(fake, 'wasserstein')


# --------------------------------------------------------------------------- the GAN step


def gan_config(data_dir, **changes):
    config = default_config()
    config.task = 'gan'
    config.dataset.name = 'digits'
    config.dataset.data_dir = data_dir
    config.model = model_config(
        'dcgan', image_size=8, channels=1, latent_dim=8, generator_width=8, discriminator_width=8
    )
    config.batch_size = 32
    config.eval_batch_size = 64
    config.num_steps = 12
    config.optimizer.name = 'adam'
    config.optimizer.learning_rate = 2e-4  # the DCGAN paper's, for both networks
    config.optimizer.b1 = 0.5
    config.schedule.name = 'constant'
    config.log_every_steps = 4
    config.eval_every_steps = 6
    config.checkpoint_every_steps = 6
    config.gan.sample_grid = 4
    for key, value in changes.items():
        block, _, leaf = key.rpartition('.')
        (config[block] if block else config)[leaf] = value
    return config


@pytest.fixture(scope='module')
def gan_setup(digits_dir):
    """Task, optimisers, initial state (one device), a real batch, and the two halves of the
    step jitted on their own."""
    config = gan_config(digits_dir)
    info = data.dataset_info('digits', digits_dir)
    task = task_from_config(config, model=loop.create_model(config, info), info=info)
    tx, _ = build_gan_optimizer(config, steps_per_epoch=40, total_steps=40)
    mesh = make_mesh(jax.devices()[:1])
    state = jax.device_get(init_train_state(task, tx, seed=0, mesh=mesh))
    source = data.load_source('digits', 'train', digits_dir)
    batch = next(iter(data.train_loader(source, global_batch_size=32, seed=0)))
    halves = (
        jax.jit(lambda *a: task.discriminator_update(tx, *a)),
        jax.jit(lambda *a: task.generator_update(tx, *a)),
    )
    return task, tx, state, batch, mesh, halves


def _same(a, b) -> bool:
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a, b)))


def _nowhere_same(a, b) -> bool:
    """Every array of the tree changed (somewhere)."""
    return not any(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a, b)))


def test_each_half_of_the_gan_step_changes_only_its_own_network(gan_setup):
    task, _, state, batch, _, (d_update, g_update) = gan_setup
    real = task.to_model_range(jnp.asarray(batch['image']))
    stats = state.model_state['batch_stats']
    key = jax.random.key(3)
    params, new_stats, opt_state, _ = d_update(state.params, stats, state.opt_state, real, key)
    assert _same(params['generator'], state.params['generator'])
    assert _same(new_stats['generator'], stats['generator'])
    assert _same(opt_state['generator'], state.opt_state['generator'])
    assert _nowhere_same(params['discriminator'], state.params['discriminator'])
    assert _nowhere_same(new_stats['discriminator'], stats['discriminator'])

    params2, stats2, opt_state2, _ = g_update(params, new_stats, opt_state, real, key)
    assert _same(params2['discriminator'], params['discriminator'])
    assert _same(stats2['discriminator'], new_stats['discriminator'])
    assert _same(opt_state2['discriminator'], opt_state['discriminator'])
    assert _nowhere_same(params2['generator'], params['generator'])
    assert _nowhere_same(stats2['generator'], new_stats['generator'])


def test_train_step_is_d_then_g(gan_setup):
    task, tx, state, batch, mesh, (d_update, g_update) = gan_setup
    step = make_train_step(task, tx, mesh, skip_nonfinite=False)
    new_state, metrics = step(jax.device_put(state), host_to_global(batch, mesh))
    new_state = jax.device_get(new_state)
    assert int(new_state.step) == 1 and np.isfinite(metrics['loss'])
    # The same as D's update with fold_in(step key, 0), then G's with fold_in(step key, 1).
    real = task.to_model_range(jnp.asarray(batch['image']))
    key = state.step_rng()
    by_hand = d_update(
        state.params,
        state.model_state['batch_stats'],
        state.opt_state,
        real,
        jax.random.fold_in(key, 0),
    )[:3]
    by_hand = g_update(*by_hand, real, jax.random.fold_in(key, 1))[:3]
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        (new_state.params, new_state.model_state['batch_stats'], new_state.opt_state),
        by_hand,
    )


def test_discriminator_batch_norm_sees_real_and_fake_in_one_batch(gan_setup):
    """D's running statistics after its update are those of the concatenated [real; fake]
    batch, not of real and fake passed separately."""
    task, _, state, batch, _, (d_update, _) = gan_setup
    real = task.to_model_range(jnp.asarray(batch['image']))
    stats = state.model_state['batch_stats']
    key = jax.random.key(5)
    _, new_stats, _, _ = d_update(state.params, stats, state.opt_state, real, key)
    fake, _ = task._apply(state.params, stats, task.noise(key, real.shape[0]), 'generate')
    _, together = task._apply(state.params, stats, jnp.concatenate([real, fake]), 'discriminate')
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        new_stats['discriminator'],
        together['discriminator'],
    )
    _, after_real = task._apply(state.params, stats, real, 'discriminate')
    _, separately = task._apply(state.params, after_real, fake, 'discriminate')
    assert not np.allclose(
        separately['discriminator']['down1_norm']['mean'],
        new_stats['discriminator']['down1_norm']['mean'],
    )


def test_gan_trains_checkpoints_both_networks_and_resumes_exactly(digits_dir, tmp_path):
    straight = tmp_path / 'straight'
    summary = loop.train_and_evaluate(gan_config(digits_dir), straight)
    assert summary['step'] == 12 and summary['devices'] == 8
    assert set(summary['eval']) >= {'d_loss', 'g_loss', 'd_real_accuracy', 'd_fake_accuracy'}
    for step in (6, 12):  # a fixed-noise grid at every evaluation
        assert (straight / 'pictures' / f'samples_step{step:06d}.png').read_bytes()[
            :4
        ] == b'\x89PNG'
    train_record = json.loads((straight / 'metrics.jsonl').read_text().splitlines()[0])
    assert {'loss', 'g_loss', 'd_real_accuracy', 'grad_norm'} <= set(train_record)

    interrupted = tmp_path / 'interrupted'
    loop.train_and_evaluate(gan_config(digits_dir, num_steps=8), interrupted)
    assert loop.train_and_evaluate(gan_config(digits_dir), interrupted)['step'] == 12
    first, second = (load_checkpoint(w / 'checkpoints') for w in (straight, interrupted))
    for part in ('params', 'opt_state'):
        assert set(first[part]) == {'generator', 'discriminator'}
    for part in ('params', 'model_state', 'opt_state'):
        jax.tree.map(np.testing.assert_array_equal, first[part], second[part])


# --------------------------------------------------------------------------- DDPM / DDIM


@pytest.mark.parametrize('name', ['linear', 'cosine'])
def test_noise_schedules_decrease_alpha_bar(name):
    schedule = diffusion.make_schedule(name, 1000)
    alpha_bars = np.asarray(schedule.alpha_bars)
    assert np.all(np.diff(alpha_bars) < 0) and 0.0 < alpha_bars[-1] < 0.01 < alpha_bars[0] < 1.0
    assert np.all((np.asarray(schedule.betas) > 0) & (np.asarray(schedule.betas) < 1))
    # float32 storage of values down to 1e-9: compare with a relative tolerance.
    np.testing.assert_allclose(
        alpha_bars, np.cumprod(1.0 - np.asarray(schedule.betas, np.float64)), rtol=1e-4
    )


def test_closed_form_forward_process_matches_iterating_it():
    """x_t = √(1-β_t) x_{t-1} + √β_t z, iterated, has the moments of q(x_t | x_0) =
    N(√ᾱ_t x_0, 1 - ᾱ_t) (and is Gaussian: compare the 4th standardised moment too)."""
    schedule = diffusion.make_schedule('linear', 1000)
    betas = np.asarray(schedule.betas, np.float64)
    rng = np.random.default_rng(0)
    x0 = np.array([-1.0, 0.3, 1.0])
    x = np.repeat(x0[None], 20_000, axis=0)
    for t in range(1000):
        x = np.sqrt(1.0 - betas[t]) * x + np.sqrt(betas[t]) * rng.standard_normal(x.shape)
        if t in (9, 99, 499, 999):
            alpha_bar = float(schedule.alpha_bars[t])
            closed = np.asarray(
                diffusion.q_sample(
                    schedule,
                    jnp.asarray(np.repeat(x0[None], 20_000, 0), jnp.float32),
                    jnp.full((20_000,), t),
                    jnp.asarray(rng.standard_normal(x.shape), jnp.float32),
                )
            )
            std = math.sqrt(1.0 - alpha_bar)
            for sample in (x, closed):
                np.testing.assert_allclose(
                    sample.mean(0), math.sqrt(alpha_bar) * x0, atol=5 * std / math.sqrt(20_000)
                )
                np.testing.assert_allclose(sample.std(0), std, rtol=0.03)
                kurtosis = np.mean(((sample - sample.mean(0)) / sample.std(0)) ** 4, axis=0)
                np.testing.assert_allclose(kurtosis, 3.0, atol=0.15)


def test_epsilon_loss_of_an_oracle_is_zero():
    schedule = diffusion.make_schedule('cosine', 1000)
    x0 = jax.random.uniform(jax.random.key(0), (16, 8, 8, 1), minval=-1, maxval=1)

    def oracle(x_t, t):  # knows x0, so it can solve x_t = √ᾱ x0 + √(1-ᾱ) ε for ε
        alpha_bar = schedule.alpha_bars[t][:, None, None, None]
        return (x_t - jnp.sqrt(alpha_bar) * x0) / jnp.sqrt(1.0 - alpha_bar)

    losses = diffusion.epsilon_losses(oracle, schedule, x0, jax.random.key(1))
    assert losses.shape == (16,) and float(jnp.max(losses)) < 1e-8
    zero_model = diffusion.epsilon_losses(
        lambda x, t: jnp.zeros_like(x), schedule, x0, jax.random.key(1)
    )
    assert 0.8 < float(jnp.mean(zero_model)) < 1.2  # E||ε||²/D = 1


def _toy_eps(x_t, t):
    """A smooth stand-in for a trained ε-model."""
    return 0.5 * jnp.tanh(x_t) * jnp.cos(t.astype(jnp.float32) / 7.0)[:, None, None, None]


def test_ddpm_step_is_algorithm_2_and_ddim_with_every_step_and_eta_1_is_ddpm():
    schedule = diffusion.make_schedule('linear', 30, beta_start=1e-3, beta_end=0.3)
    x_T = jax.random.normal(jax.random.key(0), (4, 6, 6, 1))
    key = jax.random.key(7)
    # One ancestral step against Ho et al.'s Algorithm 2 with σ_t² = β̃_t.
    t = 15
    step = diffusion.ddpm_step(_toy_eps, schedule, x_T, jnp.int32(t), key, clip=False)
    beta, alpha, alpha_bar = (
        float(v[t]) for v in (schedule.betas, schedule.alphas, schedule.alpha_bars)
    )
    sigma = math.sqrt(beta * (1 - float(schedule.alpha_bars[t - 1])) / (1 - alpha_bar))
    z = jax.random.normal(jax.random.fold_in(key, t), x_T.shape)
    eps = _toy_eps(x_T, jnp.full((4,), t))
    algorithm_2 = (x_T - beta / math.sqrt(1 - alpha_bar) * eps) / math.sqrt(alpha) + sigma * z
    np.testing.assert_allclose(step, algorithm_2, rtol=1e-5, atol=1e-5)
    # Whole chains: DDIM(steps=T, η=1) == DDPM, with and without clipping x̂₀.
    for clip in (False, True):
        ddpm = jax.jit(
            lambda x, k, clip=clip: diffusion.ddpm_sample(_toy_eps, schedule, x, k, clip=clip)
        )
        ddim = jax.jit(
            lambda x, k, clip=clip: diffusion.ddim_sample(
                _toy_eps, schedule, x, k, steps=30, eta=1.0, clip=clip
            )
        )
        np.testing.assert_allclose(ddim(x_T, key), ddpm(x_T, key), rtol=1e-4, atol=1e-4)


def test_ddim_with_eta_0_is_deterministic():
    schedule = diffusion.make_schedule('cosine', 100)
    x_T = jax.random.normal(jax.random.key(0), (4, 6, 6, 1))
    sample = jax.jit(
        lambda k, eta: diffusion.ddim_sample(_toy_eps, schedule, x_T, k, steps=10, eta=eta)
    )
    np.testing.assert_array_equal(sample(jax.random.key(1), 0.0), sample(jax.random.key(2), 0.0))
    assert not np.allclose(sample(jax.random.key(1), 1.0), sample(jax.random.key(2), 1.0))
    assert list(diffusion.ddim_timesteps(100, 5)) == [0, 25, 50, 74, 99]


def test_unet_predicts_noise_of_the_image_shape():
    model = nets.create('ddpm_unet', base_width=8, width_multipliers=(1, 2, 2))
    x = jnp.zeros((2, 28, 28, 1))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, jnp.zeros((2,), jnp.int32)))
    out = jax.eval_shape(lambda v: model.apply(v, x, jnp.zeros((2,), jnp.int32)), shapes)
    assert out.shape == x.shape
    with pytest.raises(ValueError, match='halve'):
        jax.eval_shape(
            lambda: model.init(
                jax.random.key(0), jnp.zeros((1, 10, 10, 1)), jnp.zeros((1,), jnp.int32)
            )
        )


# --------------------------------------------------------------------------- Fréchet distance


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((6, 6))
    sigma = a @ a.T + 0.1 * np.eye(6)
    mu = rng.standard_normal(6)
    assert frechet.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)
    # Commuting (diagonal) covariances: ||μ1-μ2||² + Σ (√s1 - √s2)².
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = 5.0 + (1 - 3) ** 2 + (2 - 1) ** 2 + 0.0
    assert frechet.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected)
    # 1-D: (μ1-μ2)² + (σ1-σ2)².
    assert frechet.frechet_distance([1.0], [[4.0]], [-1.0], [[1.0]]) == pytest.approx(5.0)
    b = rng.standard_normal((6, 6))
    other = b @ b.T
    assert frechet.frechet_distance(mu, sigma, 0 * mu, other) == pytest.approx(
        frechet.frechet_distance(0 * mu, other, mu, sigma), rel=1e-9
    )


def test_real_floor_uses_disjoint_halves_and_is_small_for_one_distribution():
    first, second = frechet.disjoint_halves(101, seed=3)
    assert len(first) == len(second) == 50 and not set(first) & set(second)
    rng = np.random.default_rng(0)
    features = rng.standard_normal((4000, 4))
    floor = frechet.real_floor(features)
    shifted = frechet.feature_distance(features[:2000], features[2000:] + 1.0)
    assert 0.0 < floor < 0.05 and shifted == pytest.approx(4.0, abs=0.2)  # ||(1, 1, 1, 1)||²
    coverage, histogram = frechet.class_coverage(np.array([0, 0, 3, 3, 3, 9]), 10)
    assert coverage == 0.3 and histogram[3] == pytest.approx(0.5)
    assert histogram.sum() == pytest.approx(1.0)


# --------------------------------------------------------------------------- diffusion end to end


def test_diffusion_trains_on_digits_and_writes_sample_grids(digits_dir, tmp_path):
    config = default_config()
    config.task = 'diffusion'
    config.dataset.name = 'digits'
    config.dataset.data_dir = digits_dir
    config.model = model_config('ddpm_unet', base_width=8, width_multipliers=(1,))
    config.batch_size = 32
    config.eval_batch_size = 120
    config.num_steps = 8
    config.optimizer.name = 'adam'
    config.optimizer.learning_rate = 2e-3
    config.schedule.name = 'constant'
    config.log_every_steps = 4
    config.eval_every_steps = 4
    config.ema_decay = 0.999
    config.diffusion.timesteps = 50
    config.diffusion.sample_steps = 5
    config.diffusion.sample_grid = 3
    summary = loop.train_and_evaluate(config, tmp_path)
    assert summary['step'] == 8 and np.isfinite(summary['eval']['loss'])
    for step in (4, 8):
        assert (tmp_path / 'pictures' / f'samples_step{step:06d}.png').read_bytes()[
            :4
        ] == b'\x89PNG'
    state = load_checkpoint(tmp_path / 'checkpoints')
    assert state['ema_params'] is not None  # samples come from the trainer's EMA, checkpointed
    assert np.isfinite(summary['eval']['ema_loss'])
