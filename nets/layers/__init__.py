"""Shared building blocks of the model families: `blocks` (activations, initialisers, norms,
conv-norm-act, MLP block, drop path, squeeze-excite, weight-standardised conv, pooling, input
checks), `attention`, `position`, `encoder_block`, `recurrent`, `decoding`,
`inception_blocks` (the Inception families' stems and multi-branch block)."""
