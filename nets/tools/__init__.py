"""Tools that read models without training them: `summary` (parameters, FLOPs, layer shapes,
receptive fields), `flops` (the one FLOP counter), `arithmetic` (convolution arithmetic)."""
