"""Tests for `nets.layers.recurrent`: each cell against its equations, the scanned layer against a
Python loop over the cell, padding (masked steps keep the carry; a reverse pass starts at the last
valid step), bidirectional and stacked layers, the registered classifiers and their parameter
counts.

Everything runs on tiny shapes; the whole file takes seconds on two CPU cores.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import nets
from nets.layers import recurrent as rnn
from nets.layers.recurrent import (
    BidirectionalRNN,
    GRUCell,
    LSTMCell,
    LSTMState,
    RNNLayer,
    SimpleRNNCell,
    StackedRNN,
    hidden_state,
)
from nets.models.rnn import RNNClassifier
from tests.nets_harness import fast_jit, rng

CELL_NAMES = ('rnn', 'lstm', 'gru')
IN_FEATURES, HIDDEN = 3, 4


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def random_inputs(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def layer_variables(layer: RNNLayer, x: np.ndarray) -> dict:
    return fast_jit(layer.init)(rng(0), x)


def cell_params(cell: str, seed: int = 0) -> dict:
    """Explicit numpy weights (not an initialiser's) for a cell with IN_FEATURES -> HIDDEN."""
    gates = rnn.CELLS[cell].num_gates
    draw = np.random.default_rng(seed)
    return {
        'input_kernel': draw.normal(size=(IN_FEATURES, gates * HIDDEN)).astype(np.float32),
        'recurrent_kernel': draw.normal(size=(HIDDEN, gates * HIDDEN)).astype(np.float32) * 0.5,
        'bias': draw.normal(size=(gates * HIDDEN,)).astype(np.float32),
    }


def reference_step(cell: str, params: dict, carry, x: np.ndarray):
    """One step written straight from the papers' equations, in numpy, gate by gate."""
    w, u, b = params['input_kernel'], params['recurrent_kernel'], params['bias']
    block = lambda m, g: m[..., g * HIDDEN : (g + 1) * HIDDEN]  # noqa: E731
    if cell == 'rnn':
        h = np.tanh(x @ w + carry @ u + b)
        return h, h
    if cell == 'lstm':
        c, h = carry
        i = sigmoid(x @ block(w, 0) + h @ block(u, 0) + block(b, 0))
        f = sigmoid(x @ block(w, 1) + h @ block(u, 1) + block(b, 1))
        g = np.tanh(x @ block(w, 2) + h @ block(u, 2) + block(b, 2))
        o = sigmoid(x @ block(w, 3) + h @ block(u, 3) + block(b, 3))
        c_new = f * c + i * g
        h_new = o * np.tanh(c_new)
        return (c_new, h_new), h_new
    h = carry
    z = sigmoid(x @ block(w, 0) + h @ block(u, 0) + block(b, 0))
    r = sigmoid(x @ block(w, 1) + h @ block(u, 1) + block(b, 1))
    n = np.tanh(x @ block(w, 2) + (r * h) @ block(u, 2) + block(b, 2))
    h_new = z * h + (1 - z) * n
    return h_new, h_new


# --------------------------------------------------------------------------- cells


@pytest.mark.parametrize('cell', CELL_NAMES)
def test_cell_step_matches_its_equations(cell):
    params = cell_params(cell)
    x = random_inputs((2, IN_FEATURES), seed=1)
    h = random_inputs((2, HIDDEN), seed=2)
    module = rnn.make_cell(cell, HIDDEN)
    carry = LSTMState(c=random_inputs((2, HIDDEN), seed=3), h=h) if cell == 'lstm' else h
    ref_carry = (np.asarray(carry.c), np.asarray(carry.h)) if cell == 'lstm' else carry
    new_carry, out = module.apply({'params': params}, carry, x)
    expected_carry, expected_out = reference_step(cell, params, ref_carry, x)
    np.testing.assert_allclose(out, expected_out, rtol=1e-5, atol=1e-6)
    if cell == 'lstm':
        assert isinstance(new_carry, LSTMState)
        np.testing.assert_allclose(new_carry.c, expected_carry[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(new_carry.h, expected_carry[1], rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_allclose(new_carry, expected_carry, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('cell', CELL_NAMES)
def test_cell_initialisation(cell):
    module = rnn.make_cell(cell, HIDDEN)
    carry = module.initial_carry(5)
    assert jax.tree.map(jnp.shape, carry) == jax.tree.map(lambda _: (5, HIDDEN), carry)
    assert all(not np.any(leaf) for leaf in jax.tree.leaves(carry))
    params = module.init(rng(0), carry, jnp.zeros((5, IN_FEATURES)))['params']
    # Each gate's recurrent block is an orthogonal square matrix: Uᵀ U = I.
    u = np.asarray(params['recurrent_kernel'])
    for g in range(rnn.CELLS[cell].num_gates):
        block = u[:, g * HIDDEN : (g + 1) * HIDDEN]
        np.testing.assert_allclose(block.T @ block, np.eye(HIDDEN), atol=1e-5)
    # Zero biases, except the LSTM forget gate (block 1 of i, f, g, o), which starts at 1.
    expected_bias = np.zeros(rnn.CELLS[cell].num_gates * HIDDEN)
    if cell == 'lstm':
        expected_bias[HIDDEN : 2 * HIDDEN] = 1.0
    np.testing.assert_array_equal(params['bias'], expected_bias)
    assert (
        LSTMCell(HIDDEN, forget_bias=0.0)
        .init(rng(0), LSTMCell(HIDDEN).initial_carry(1), jnp.zeros((1, 2)))['params']['bias']
        .sum()
        == 0
    )


@pytest.mark.parametrize('cls, gates', [(SimpleRNNCell, 1), (LSTMCell, 4), (GRUCell, 3)])
@pytest.mark.parametrize('d_in, h', [(1, 6), (7, 3)])
def test_cell_param_count_closed_form(cls, gates, d_in, h):
    module = cls(features=h)
    shapes = jax.eval_shape(
        module.init,
        jax.random.key(0),
        module.initial_carry(2),
        jax.ShapeDtypeStruct((2, d_in), jnp.float32),
    )
    count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes['params']))
    assert count == gates * (d_in * h + h * h + h)


def test_classifier_param_count_closed_form():
    d_in, h, classes = 1, 8, 10
    gru = 3 * (d_in * h + h * h + h)
    assert (
        nets.count_params(nets.create('gru', hidden_size=h), (1, 40, d_in))
        == gru + h * classes + classes
    )
    # Two bidirectional LSTM layers: the second reads both directions (2h features).
    model = nets.create('lstm', hidden_size=h, num_layers=2, bidirectional=True)
    lstm = lambda d: 4 * (d * h + h * h + h)  # noqa: E731
    expected = 2 * lstm(d_in) + 2 * lstm(2 * h) + 2 * h * classes + classes
    assert nets.count_params(model, (1, 40, d_in)) == expected
    # The paper's MNIST-1D readout: every step's (2h) outputs feed the head.
    flat = nets.create('gru', hidden_size=h, bidirectional=True, readout='flatten')
    assert nets.count_params(flat, (1, 40, d_in)) == 2 * gru + 40 * 2 * h * classes + classes


# --------------------------------------------------------------------------- layers


@pytest.mark.parametrize('cell', CELL_NAMES)
@pytest.mark.parametrize('reverse', [False, True])
def test_scanned_layer_equals_python_loop_over_the_cell(cell, reverse):
    x = random_inputs((2, 6, IN_FEATURES))
    layer = RNNLayer(cell=cell, features=HIDDEN, reverse=reverse)
    variables = layer_variables(layer, x)
    carry, outputs = layer.apply(variables, x, return_carry=True)

    module = rnn.make_cell(cell, HIDDEN)
    cell_variables = {'params': variables['params']['cell']}
    loop_carry = module.initial_carry(2)
    expected = [None] * 6
    for t in reversed(range(6)) if reverse else range(6):
        loop_carry, expected[t] = module.apply(cell_variables, loop_carry, x[:, t])
    np.testing.assert_allclose(outputs, np.stack(expected, axis=1), rtol=1e-5, atol=1e-6)
    for got, want in zip(jax.tree.leaves(carry), jax.tree.leaves(loop_carry)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_padded_steps_leave_the_carry_unchanged(cell):
    x = random_inputs((2, 6, IN_FEATURES))
    # Example 0 has holes in the middle and padding at the end; example 1 is all valid.
    valid = np.array([[1, 0, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
    layer = RNNLayer(cell=cell, features=HIDDEN)
    variables = layer_variables(layer, x)
    apply = fast_jit(lambda x, valid: layer.apply(variables, x, valid=valid, return_carry=True))
    carry, outputs = apply(x, valid)
    assert not np.any(np.asarray(outputs)[~valid])

    # The same as reading only the valid steps.
    kept_carry, kept_outputs = layer.apply(variables, x[:1, valid[0]], return_carry=True)
    np.testing.assert_allclose(outputs[0, valid[0]], kept_outputs[0], rtol=1e-5, atol=1e-6)
    for got, want in zip(jax.tree.leaves(carry), jax.tree.leaves(kept_carry)):
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)

    # Whatever sits at padded steps changes nothing.
    noisy = x.copy()
    noisy[~valid] = 1e3 * random_inputs(noisy[~valid].shape, seed=9)
    noisy_carry, noisy_outputs = apply(noisy, valid)
    np.testing.assert_array_equal(noisy_outputs, outputs)
    for got, want in zip(jax.tree.leaves(noisy_carry), jax.tree.leaves(carry)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize('cell', CELL_NAMES)
def test_reverse_pass_starts_at_the_last_valid_step(cell):
    x = random_inputs((2, 6, IN_FEATURES))
    lengths = np.array([6, 3])
    layer = RNNLayer(cell=cell, features=HIDDEN, reverse=True)
    variables = layer_variables(layer, x)
    carry, outputs = layer.apply(variables, x, lengths=lengths, return_carry=True)

    # Example 1's last valid step (t=2) is read first, from the initial carry.
    module = rnn.make_cell(cell, HIDDEN)
    _, first = module.apply(
        {'params': variables['params']['cell']}, module.initial_carry(1), x[1:, 2]
    )
    np.testing.assert_allclose(outputs[1, 2], first[0], rtol=1e-5, atol=1e-6)
    # And the whole reverse pass equals the one over the unpadded sequence.
    alone_carry, alone = layer.apply(variables, x[1:, :3], return_carry=True)
    np.testing.assert_allclose(outputs[1, :3], alone[0], rtol=1e-5, atol=1e-6)
    assert not np.any(np.asarray(outputs[1, 3:]))
    for got, want in zip(jax.tree.leaves(carry), jax.tree.leaves(alone_carry)):
        np.testing.assert_allclose(got[1], want[0], rtol=1e-5, atol=1e-6)


def test_initial_carry_is_used():
    x = random_inputs((2, 4, IN_FEATURES))
    layer = RNNLayer(cell='lstm', features=HIDDEN)
    variables = layer_variables(layer, x)
    start = LSTMState(c=jnp.ones((2, HIDDEN)), h=jnp.ones((2, HIDDEN)))
    default = layer.apply(variables, x)
    given = layer.apply(variables, x, initial_carry=start)
    assert not np.allclose(default, given)
    # A fully padded sequence hands its initial carry straight back.
    carry, outputs = layer.apply(
        variables, x, lengths=np.array([0, 4]), initial_carry=start, return_carry=True
    )
    np.testing.assert_array_equal(carry.c[0], start.c[0])
    np.testing.assert_array_equal(hidden_state(carry)[0], start.h[0])


def looped_lstm_layer(
    params: dict, x: jax.Array, valid: np.ndarray, start: LSTMState, reverse: bool, dtype
) -> tuple[LSTMState, jax.Array]:
    """RNNLayer's semantics as a Python loop over LSTMCell (JAX differentiates it step by step)."""
    cell = LSTMCell(HIDDEN, dtype=dtype)
    carry, outputs = start, [None] * x.shape[1]
    for t in reversed(range(x.shape[1])) if reverse else range(x.shape[1]):
        new_carry, y = cell.apply({'params': params}, carry, x[:, t])
        keep = valid[:, t, None]
        carry = jax.tree.map(
            lambda new, old, keep=keep: jnp.where(keep, new, old), new_carry, carry
        )
        outputs[t] = jnp.where(keep, y, 0)
    return carry, jnp.stack(outputs, axis=1)


@pytest.mark.parametrize(
    'reverse, dtype, tolerance',
    [(False, jnp.float32, 1e-5), (True, jnp.float32, 1e-5), (False, jnp.bfloat16, 3e-2)],
)
def test_lstm_layer_gradients_equal_autodiff_through_the_cell(reverse, dtype, tolerance):
    """RNNLayer's LSTM has its own backward pass (nets.kernels.fused_lstm); every gradient, through
    padding, the initial carry and the final carry, equals JAX's through a loop over the cell."""
    x = random_inputs((3, 5, IN_FEATURES))
    valid = np.array([[1, 1, 1, 1, 1], [1, 0, 1, 1, 0], [1, 1, 0, 0, 0]], bool)
    start = LSTMState(
        c=jnp.asarray(random_inputs((3, HIDDEN), seed=1)),
        h=jnp.asarray(random_inputs((3, HIDDEN), seed=2)),
    )
    layer = RNNLayer(cell='lstm', features=HIDDEN, reverse=reverse, dtype=dtype)
    params = {k: jnp.asarray(v) for k, v in cell_params('lstm').items()}
    weights = jnp.asarray(random_inputs((3, 5, HIDDEN), seed=3))

    def loss(run):
        def value(params, x, start):
            carry, outputs = run(params, x, start)
            return (
                jnp.sum(outputs.astype(jnp.float32) * weights)
                + jnp.sum(carry.c * carry.h)
                + jnp.sum(carry.c**2)
            )

        return fast_jit(jax.value_and_grad(value, argnums=(0, 1, 2)))(params, jnp.asarray(x), start)

    fused = loss(
        lambda p, x, s: layer.apply(
            {'params': {'cell': p}}, x, valid=valid, initial_carry=s, return_carry=True
        )
    )
    looped = loss(lambda p, x, s: looped_lstm_layer(p, x, valid, s, reverse, dtype))
    np.testing.assert_allclose(fused[0], looped[0], rtol=tolerance)
    for path, got in jax.tree_util.tree_leaves_with_path(fused[1]):
        want = dict(jax.tree_util.tree_leaves_with_path(looped[1]))[path]
        scale = np.max(np.abs(np.asarray(want, np.float32)))
        np.testing.assert_allclose(
            np.asarray(got, np.float32),
            np.asarray(want, np.float32),
            atol=tolerance * scale,
            err_msg=jax.tree_util.keystr(path),
        )
    # Padded inputs get no gradient.
    assert not np.any(np.asarray(fused[1][1], np.float32)[~valid])


def test_lstm_layer_gradient_on_a_batch_sharded_mesh_gathers_nothing():
    """Data parallel: the weight gradients are per-device partial products and one all-reduce;
    merging the sharded batch axis with time would all-gather the stacked activations."""
    mesh = Mesh(np.array(jax.devices()[:2]), ('data',))
    x = jax.device_put(
        random_inputs((4, 6, IN_FEATURES)), NamedSharding(mesh, PartitionSpec('data'))
    )
    layer = RNNLayer(cell='lstm', features=HIDDEN)
    params = jax.device_put(
        layer_variables(layer, x)['params'], NamedSharding(mesh, PartitionSpec())
    )
    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(layer.apply({'params': p}, x) ** 2)))
    hlo = grad.lower(params, x).compile().as_text()
    assert 'all-reduce' in hlo
    assert 'all-gather' not in hlo


@pytest.mark.parametrize('merge, width', [('concat', 2 * HIDDEN), ('sum', HIDDEN)])
def test_bidirectional_output_shapes(merge, width):
    x = random_inputs((2, 5, IN_FEATURES))
    layer = BidirectionalRNN(cell='gru', features=HIDDEN, merge=merge)
    variables = layer_variables(layer, x)
    (forward, backward), outputs = layer.apply(
        variables, x, lengths=np.array([5, 2]), return_carry=True
    )
    assert outputs.shape == (2, 5, width)
    assert forward.shape == backward.shape == (2, HIDDEN)
    assert set(variables['params']) == {'forward', 'backward'}
    assert not np.any(np.asarray(outputs[1, 2:]))


def test_gradients_flow_through_a_stacked_bidirectional_lstm():
    x = random_inputs((2, 5, IN_FEATURES))
    model = StackedRNN(
        cell='lstm', features=HIDDEN, num_layers=2, bidirectional=True, dropout_rate=0.2
    )
    variables = fast_jit(model.init)(rng(0), x)
    assert set(variables['params']) == {'layer0', 'layer1'}

    def loss(params):
        y = model.apply(
            {'params': params}, x, lengths=jnp.array([5, 3]), train=True, rngs={'dropout': rng(1)}
        )
        return jnp.sum(y**2)

    grads = fast_jit(jax.grad(loss))(variables['params'])
    for path, grad in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(grad)), path
        assert np.any(grad != 0), path
    # Dropout sits between layers only: evaluation is deterministic.
    out = model.apply(variables, x)
    assert out.shape == (2, 5, 2 * HIDDEN)
    np.testing.assert_array_equal(out, model.apply(variables, x))


# --------------------------------------------------------------------------- classifiers


def test_registered_classifiers():
    assert nets.list_models(family='rnn') == ['gru', 'lstm', 'rnn']
    assert {name: nets.model_defaults(name)['cell'] for name in CELL_NAMES} == {
        n: n for n in CELL_NAMES
    }


@pytest.mark.parametrize(
    'name, overrides',
    [
        ('rnn', dict(hidden_size=8)),
        (
            'lstm',
            dict(hidden_size=8, num_layers=2, bidirectional=True, readout='mean', dropout_rate=0.1),
        ),
        ('gru', dict(hidden_size=6, bidirectional=True, readout='flatten')),
    ],
)
def test_classifier_logits_on_mnist1d_shaped_inputs(name, overrides):
    model = nets.create(name, num_classes=10, **overrides)
    x = random_inputs((3, 40, 1))
    variables = fast_jit(model.init)(rng(0), x)
    logits = fast_jit(lambda v, x: model.apply(v, x, train=True, rngs={'dropout': rng(1)}))(
        variables, x
    )
    assert logits.shape == (3, 10) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))


@pytest.mark.parametrize(
    'readout, bidirectional', [('last', False), ('last', True), ('mean', True)]
)
def test_classifier_readout_ignores_padding(readout, bidirectional):
    model = RNNClassifier(
        num_classes=5, cell='gru', hidden_size=HIDDEN, readout=readout, bidirectional=bidirectional
    )
    x = random_inputs((2, 7, 2))
    variables = fast_jit(model.init)(rng(0), x)
    padded = model.apply(variables, x, lengths=np.array([7, 4]))
    np.testing.assert_allclose(
        padded[1], model.apply(variables, x[1:, :4])[0], rtol=1e-5, atol=1e-6
    )


def test_classifier_reads_images_row_by_row_and_in_bfloat16():
    model = nets.create('lstm', hidden_size=8, dtype='bfloat16')
    x = random_inputs((2, 8, 8, 1))
    variables = fast_jit(model.init)(rng(0), x)
    assert variables['params']['rnn']['layer0']['cell']['input_kernel'].shape == (8, 32)
    assert variables['params']['head']['kernel'].dtype == jnp.float32
    logits = model.apply(variables, x)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    # The carry stays float32 under bfloat16 compute.
    carry, outputs = RNNLayer(cell='gru', features=4, dtype=jnp.bfloat16).apply(
        {'params': {'cell': cell_params('gru')}},
        random_inputs((2, 5, IN_FEATURES)),
        return_carry=True,
    )
    assert carry.dtype == jnp.float32 and outputs.dtype == jnp.bfloat16


# --------------------------------------------------------------------------- errors


def test_bad_configurations_raise_naming_the_choices():
    with pytest.raises(ValueError, match=r"Unknown cell 'transformer'.*\['gru', 'lstm', 'rnn'\]"):
        RNNLayer(cell='transformer', features=4)
    with pytest.raises(ValueError, match=r"Unknown cell 'elman'.*'gru'"):
        rnn.make_cell('elman', 4)
    with pytest.raises(ValueError, match=r"Unknown cell 'tcn'"):
        nets.create('gru', cell='tcn')
    with pytest.raises(ValueError, match=r"Unknown readout 'max'.*'flatten', 'last', 'mean'"):
        nets.create('gru', readout='max')
    with pytest.raises(ValueError, match=r"Unknown merge 'mul'"):
        BidirectionalRNN(cell='gru', features=4, merge='mul')
    with pytest.raises(ValueError, match='num_layers'):
        StackedRNN(cell='lstm', features=4, num_layers=0)
    with pytest.raises(ValueError, match='dropout_rate'):
        nets.create('lstm', dropout_rate=1.5)
    with pytest.raises(ValueError, match='features must be positive'):
        LSTMCell(features=0)
    with pytest.raises(ValueError, match="Unknown recurrent_kernel_init 'unitary'"):
        GRUCell(features=4, recurrent_kernel_init='unitary')


def test_bad_inputs_raise():
    layer = RNNLayer(cell='rnn', features=4)
    x = jnp.zeros((2, 5, 3))
    with pytest.raises(ValueError, match='either valid or lengths'):
        layer.init(rng(0), x, valid=jnp.ones((2, 5), bool), lengths=jnp.array([5, 5]))
    with pytest.raises(ValueError, match=r'valid has shape \(2, 4\)'):
        layer.init(rng(0), x, valid=jnp.ones((2, 4), bool))
    with pytest.raises(ValueError, match=r'\(batch, time, features\)'):
        layer.init(rng(0), jnp.zeros((2, 5)))
    with pytest.raises(ValueError, match=r'\(batch, time, channels\)'):
        nets.create('gru').init(rng(0), jnp.zeros((2, 40)))


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason="XLA's CPU bfloat16 rewriting")
def test_bfloat16_lstm_stacks_its_outputs_in_place():
    # XLA's CPU backend has no bfloat16 dynamic-update-slice: a scan stacking bfloat16 values
    # converts the whole stack to float32 and back at every step. The fused LSTM stacks their
    # bits as uint16, so the compiled step updates no bfloat16 buffer.
    from nets.kernels.fused_lstm import lstm_sequence

    t, b, n, h = 16, 4, 8, 8
    key = jax.random.key(0)
    w_x, w_h = jax.random.normal(key, (n, 4 * h)), jax.random.normal(key, (h, 4 * h))
    xs = jax.random.normal(key, (t, b, n)).astype(jnp.bfloat16)
    carry = (jnp.zeros((b, h)), jnp.zeros((b, h)))
    mask = jnp.ones((t, b), bool)

    def loss(w_x, w_h, bias, xs):
        _, ys = lstm_sequence(w_x, w_h, bias, carry, xs, mask, False, 1, jnp.bfloat16)
        return jnp.sum(ys.astype(jnp.float32) ** 2)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))
    hlo = grad.lower(w_x, w_h, jnp.zeros(4 * h), xs).compile().as_text()
    # Computations (fusions, loop bodies) that write into a stack: none converts a whole
    # (t, b, ...) stack.
    writers = [c for c in hlo.split('\n\n') if 'dynamic-update-slice(' in c]
    assert writers
    for computation in writers:
        for line in computation.splitlines():
            assert not (f'[{t},{b},' in line.split('convert(')[0] and 'convert(' in line), line
