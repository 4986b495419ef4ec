"""4-bit weight quantization: the pure math (RTN, MSE clipping, GPTQ, AWQ) and int4 packing."""
