"""Backend-specific implementations behind one switch (`switch`): convolutions (`conv`, with
oneDNN kernels on the CPU in `onednn_conv` and `native/`), mixed-precision products
(`mixed_precision`), the fused LSTM (`fused_lstm`) and batch norm's backward pass
(`batch_norm`). Models never read the environment."""
