"""Backend-specific implementations behind one switch (`switch`): convolutions (`conv`, with
oneDNN kernels on the CPU in `onednn_conv` and `native/`), mixed-precision products
(`mixed_precision`) and the fused LSTM (`fused_lstm`). Models never read the environment."""
