"""The attention-memory benchmark's claim, from XLA's compiled memory analysis (deterministic;
no timing): a training step of self-attention needs memory that grows with L², an LSTM's with L."""

import pytest

from experiments.benchmarks import attention_memory

LENGTHS = (128, 256)  # two lengths: each costs three compiles


@pytest.fixture(scope='module')
def stats():
    # repeats=0: compile and read the memory analysis only, nothing is timed.
    return {
        length: attention_memory.measure_length(length, width=32, heads=4, batch=1, repeats=0)
        for length in LENGTHS
    }


@pytest.mark.parametrize('layer', ['attention', 'attention_xla'])
def test_attention_temporaries_grow_quadratically(stats, layer):
    temp = {n: stats[n][layer]['temp_size_in_bytes'] for n in LENGTHS}
    # Doubling L quadruples the (heads, L, L) weights; linear terms pull the ratio a little below 4.
    assert temp[256] / temp[128] > 3.0, temp
    # At L=256 the temporaries hold at least the one (1, 4, 256, 256) float32 weight matrix.
    assert temp[256] >= 4 * 256 * 256 * 4


def test_lstm_temporaries_grow_linearly(stats):
    temp = {n: stats[n]['lstm']['temp_size_in_bytes'] for n in LENGTHS}
    assert 1.5 < temp[256] / temp[128] < 2.5, temp


def test_memory_is_temp_plus_arguments_plus_outputs(stats):
    for results in stats.values():
        for layer in attention_memory.LAYERS:
            s = results[layer]
            assert s['memory_bytes'] == (
                s['temp_size_in_bytes'] + s['argument_size_in_bytes'] + s['output_size_in_bytes']
            )
            assert s['alias_size_in_bytes'] == 0  # nothing donated, so nothing counted twice
            assert 'median_ms' not in s


def test_attention_over_lstm_ratio_grows(stats):
    ratio = {
        n: stats[n]['attention']['memory_bytes'] / stats[n]['lstm']['memory_bytes'] for n in LENGTHS
    }
    assert ratio[256] > 1.8 * ratio[128], ratio


def test_fit_slope_and_upper_half():
    assert attention_memory.fit_slope([64, 128, 256], [1.0, 4.0, 16.0]) == pytest.approx(2.0)
    assert attention_memory.fit_slope([64, 128, 256], [3.0, 6.0, 12.0]) == pytest.approx(1.0)
    assert attention_memory.upper_half([4096, 64, 128, 256, 512, 1024, 2048]) == [
        512,
        1024,
        2048,
        4096,
    ]
    assert attention_memory.upper_half([64, 128, 256, 512]) == [256, 512]


def test_unknown_layer_is_rejected():
    with pytest.raises(ValueError, match='lstm'):
        attention_memory.make_layer('gru', 32, 4)
