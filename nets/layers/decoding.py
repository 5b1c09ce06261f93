"""Greedy and beam-search decoding for any autoregressive sequence model.

The search knows nothing about the model. It drives a step function

    step_fn(tokens, state) -> (scores, new_state)

where `tokens` (rows,) int32 are the tokens chosen at the previous step (`bos_id`
at the first), `scores` (rows, vocab) are log-probabilities or unnormalised
logits of the next token (a log-softmax is applied either way; it leaves
log-probabilities unchanged), and `state` is any pytree the model carries from
step to step: a Transformer's KV cache, an RNN's hidden state, a step counter.
Its array leaves have the rows as their leading axis; scalar leaves (a cache
index shared by every row) are carried as they are.

The initial state is given for the batch, (batch, ...) leaves. Beam search repeats
every example `beam_size` times (rows = batch * beam_size, example-major: row
b * beam_size + k is beam k of example b) and, after each step, reorders the
rows so that each beam carries the state of the hypothesis it extends. Arrays the
step function closes over (an encoder output) must be laid out the same way:
`expand_to_beams(x, beam_size)`.

Both searches run in one `jax.lax.while_loop`, so they jit (with `step_fn`,
`max_length` and `beam_size` static) and stop as soon as every example is done.
Sequences hold the generated tokens (no bos), `eos_id` included, `pad_id` after it.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

State = Any
StepFn = Callable[[jax.Array, State], tuple[jax.Array, State]]

GNMT_ALPHA = 0.6  # Vaswani et al. 2017 §6.1: beam size 4, length penalty α = 0.6


def length_penalty(length: jax.Array | int, alpha: float) -> jax.Array:
    """GNMT's length penalty lp(Y) = ((5 + |Y|) / 6)^α (Wu et al. 2016, eq. 14).

    Beam search ranks finished hypotheses by log P(Y) / lp(Y); α = 0 ranks by
    log-probability, which favours short outputs. |Y| counts the generated
    tokens, eos included.
    """
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def expand_to_beams(tree: State, beam_size: int) -> State:
    """Repeats every example's rows `beam_size` times: (batch, ...) -> (batch * beam_size, ...).

    Scalar leaves are left alone. Row b * beam_size + k is beam k of example b.
    """

    def expand(leaf):
        leaf = jnp.asarray(leaf)
        return leaf if leaf.ndim == 0 else jnp.repeat(leaf, beam_size, axis=0)

    return jax.tree_util.tree_map(expand, tree)


def gather_beams(tree: State, parents: jax.Array) -> State:
    """Reorders (batch * beams, ...) leaves so beam k of example b takes the rows of beam
    parents[b, k].

    Scalar leaves are shared by every row and are left alone.
    """
    batch_size, beam_size = parents.shape

    def gather(leaf):
        if leaf.ndim == 0:
            return leaf
        if leaf.shape[0] != batch_size * beam_size:
            raise ValueError(
                f'decoding state leaves must have batch * beam_size = {batch_size * beam_size} '
                f'rows (or be scalars), got a leaf of shape {leaf.shape}'
            )
        beams = leaf.reshape(batch_size, beam_size, *leaf.shape[1:])
        index = parents.reshape(batch_size, beam_size, *(1,) * (leaf.ndim - 1))
        return jnp.take_along_axis(beams, index, axis=1).reshape(leaf.shape)

    return jax.tree_util.tree_map(gather, tree)


def _check_search_arguments(batch_size: int, max_length: int, beam_size: int, alpha: float) -> None:
    for name, value in (
        ('batch_size', batch_size),
        ('max_length', max_length),
        ('beam_size', beam_size),
    ):
        if int(value) != value or value < 1:
            raise ValueError(f'{name} must be a positive integer, got {value!r}')
    if alpha < 0:
        raise ValueError(f'length penalty alpha must be >= 0, got {alpha!r}')


def _next_log_probs(step_fn: StepFn, tokens: jax.Array, state: State) -> tuple[jax.Array, State]:
    scores, state = step_fn(tokens, state)
    return jax.nn.log_softmax(scores.astype(jnp.float32), axis=-1), state


def greedy_search(
    step_fn: StepFn,
    initial_state: State,
    *,
    batch_size: int,
    max_length: int,
    bos_id: int,
    eos_id: int,
    pad_id: int = 0,
) -> tuple[jax.Array, jax.Array]:
    """Picks the most probable next token at every step.

    Returns `sequences` (batch, max_length) int32 and `scores` (batch,), the summed
    log-probabilities of each sequence's tokens (eos included). A sequence that
    reaches max_length without eos ends there.
    """
    _check_search_arguments(batch_size, max_length, 1, 0.0)

    def not_done(carry):
        step, _, finished, _, _, _ = carry
        return (step < max_length) & ~jnp.all(finished)

    def body(carry):
        step, tokens, finished, sequences, scores, state = carry
        log_probs, state = _next_log_probs(step_fn, tokens, state)
        chosen = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)
        chosen_log_prob = jnp.take_along_axis(log_probs, chosen[:, None], axis=-1)[:, 0]
        scores = scores + jnp.where(finished, 0.0, chosen_log_prob)
        chosen = jnp.where(finished, pad_id, chosen)
        sequences = sequences.at[:, step].set(chosen)
        finished = finished | (chosen == eos_id)
        return step + 1, chosen, finished, sequences, scores, state

    carry = (
        jnp.array(0, jnp.int32),
        jnp.full((batch_size,), bos_id, jnp.int32),
        jnp.zeros((batch_size,), bool),
        jnp.full((batch_size, max_length), pad_id, jnp.int32),
        jnp.zeros((batch_size,), jnp.float32),
        initial_state,
    )
    _, _, _, sequences, scores, _ = jax.lax.while_loop(not_done, body, carry)
    return sequences, scores


def beam_search(
    step_fn: StepFn,
    initial_state: State,
    *,
    batch_size: int,
    beam_size: int,
    max_length: int,
    bos_id: int,
    eos_id: int,
    pad_id: int = 0,
    alpha: float = GNMT_ALPHA,
) -> tuple[jax.Array, jax.Array]:
    """Beam search with GNMT length normalisation.

    Every step extends each alive beam by every token and keeps the best
    2·beam_size candidates by log-probability. Candidates ending in eos that rank
    among the first beam_size are finished, scored log P / lp(length) (see
    `length_penalty`); the best beam_size candidates that do not end in eos stay
    alive. At max_length every surviving candidate is finished as it is. An
    example is done once it has beam_size finished hypotheses; finished ones are
    never extended (pad follows their eos).

    This is fairseq's search (Ott et al. 2019): an eos ranked below the first
    beam_size candidates is dropped, and the search stops at beam_size finished
    hypotheses rather than when no alive beam can still beat them (tensor2tensor).
    So beam_size=1 is exactly greedy search.

    Returns `sequences` (batch, beam_size, max_length) int32 and their
    length-normalised `scores` (batch, beam_size), best first. Slots with no
    hypothesis (a vocabulary too small to fill the beam) score -inf.
    """
    _check_search_arguments(batch_size, max_length, beam_size, alpha)
    num_candidates = 2 * beam_size
    rank = jnp.arange(num_candidates)

    def top(scores, k, *arrays):
        """The k best of `scores` (batch, n) and the matching entries of each (batch, n, ...)
        array."""
        best, index = jax.lax.top_k(scores, k)
        return best, *(
            jnp.take_along_axis(a, index.reshape(*index.shape, *(1,) * (a.ndim - 2)), axis=1)
            for a in arrays
        )

    def not_done(carry):
        step, num_finished = carry[0], carry[5]
        return (step < max_length) & ~jnp.all(num_finished >= beam_size)

    def body(carry):
        (
            step,
            tokens,
            alive_log_probs,
            alive_sequences,
            finished_scores,
            num_finished,
            finished_sequences,
            state,
        ) = carry
        log_probs, state = _next_log_probs(step_fn, tokens.reshape(-1), state)
        vocab_size = log_probs.shape[-1]
        candidates = alive_log_probs[:, :, None] + log_probs.reshape(
            batch_size, beam_size, vocab_size
        )
        candidate_log_probs, flat_index = jax.lax.top_k(
            candidates.reshape(batch_size, -1), num_candidates
        )
        parents = flat_index // vocab_size
        candidate_tokens = (flat_index % vocab_size).astype(jnp.int32)
        candidate_sequences = jnp.take_along_axis(alive_sequences, parents[:, :, None], axis=1)
        candidate_sequences = candidate_sequences.at[:, :, step].set(candidate_tokens)

        # Finish eos candidates among the first beam_size (all of them at the last step),
        # unless the example already has its beam_size finished hypotheses.
        ends = (candidate_tokens == eos_id) | (step == max_length - 1)
        finishing = (
            ends
            & (rank < beam_size)
            & jnp.isfinite(candidate_log_probs)
            & (num_finished < beam_size)[:, None]
        )
        new_scores = jnp.where(
            finishing, candidate_log_probs / length_penalty(step + 1, alpha), -jnp.inf
        )
        finished_scores, finished_sequences = top(
            jnp.concatenate([finished_scores, new_scores], axis=1),
            beam_size,
            jnp.concatenate([finished_sequences, candidate_sequences], axis=1),
        )
        num_finished = num_finished + jnp.sum(finishing, axis=1)

        alive_candidates = jnp.where(candidate_tokens == eos_id, -jnp.inf, candidate_log_probs)
        alive_log_probs, alive_sequences, parents, tokens = top(
            alive_candidates, beam_size, candidate_sequences, parents, candidate_tokens
        )
        state = gather_beams(state, parents)
        return (
            step + 1,
            tokens,
            alive_log_probs,
            alive_sequences,
            finished_scores,
            num_finished,
            finished_sequences,
            state,
        )

    # All beams start as copies of one hypothesis; only beam 0 is live at first, so
    # the first step's candidates are distinct.
    alive_log_probs = jnp.where(jnp.arange(beam_size) == 0, 0.0, -jnp.inf)
    carry = (
        jnp.array(0, jnp.int32),
        jnp.full((batch_size, beam_size), bos_id, jnp.int32),
        jnp.broadcast_to(alive_log_probs, (batch_size, beam_size)).astype(jnp.float32),
        jnp.full((batch_size, beam_size, max_length), pad_id, jnp.int32),
        jnp.full((batch_size, beam_size), -jnp.inf, jnp.float32),
        jnp.zeros((batch_size,), jnp.int32),
        jnp.full((batch_size, beam_size, max_length), pad_id, jnp.int32),
        expand_to_beams(initial_state, beam_size),
    )
    carry = jax.lax.while_loop(not_done, body, carry)
    return carry[6], carry[4]
