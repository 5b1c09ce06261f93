"""Shared test set-up: 8 simulated CPU devices for every test, so each training test also
exercises the data-parallel mesh; a small real data set prepared once per session."""

import os

# Must happen before JAX is imported anywhere. The tests' programs are tiny and compiled once
# or twice each, so compiling dominates: XLA's CPU backend without LLVM optimisations compiles
# them about twice as fast and runs them about as fast.
# Subprocesses that set their own XLA_FLAGS add FAST_COMPILE too.
FAST_COMPILE = '--xla_backend_optimization_level=0'
# The flags without which XLA crashes on this CPU (train.runtime.required_xla_flags), as every run
# of the trainer has them.
from train.host_cpu import this_cpu  # noqa: E402
from train.runtime import required_xla_flags  # noqa: E402

os.environ['XLA_FLAGS'] = ' '.join(
    [
        os.environ.get('XLA_FLAGS', ''),
        '--xla_force_host_platform_device_count=8',
        FAST_COMPILE,
        *required_xla_flags(this_cpu()),
    ]
).strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax  # noqa: E402
import pytest  # noqa: E402

# Start the CPU backend now, with those 8 devices: a test that empties XLA_FLAGS for a while
# (tests/test_runtime.py) must not be the one that starts it.
jax.devices()


@pytest.fixture(scope='session')
def digits_dir(tmp_path_factory):
    """scikit-learn's 8x8 digits (1,797 real images) prepared as a TFDS data set."""
    from data.prepare import prepare

    data_dir = tmp_path_factory.mktemp('tfds')
    prepare(['digits'], str(data_dir))
    return str(data_dir)


@pytest.fixture(scope='module')
def rbg_random_numbers():
    """XLA:CPU compiles threefry slowly (a small model's init takes a second or more, in every
    trainer run): this module's tiny runs draw their random numbers with the 'rbg' generator."""
    import jax

    previous = jax.config.jax_default_prng_impl
    jax.config.update('jax_default_prng_impl', 'rbg')
    yield
    jax.config.update('jax_default_prng_impl', previous)
