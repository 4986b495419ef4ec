"""4-bit weight quantization: the pure math (RTN, MSE clipping, GPTQ, AWQ), recipes, calibration
and the layer-by-layer driver. The stored form (QTensor, nibbles, the checkpoint) is in `nano/`."""
