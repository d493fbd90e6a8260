"""4-bit quantization: the AWQ engine (GPTQModel, with a fast CPU compute path) and the
published AutoAWQ GEMM layout."""
