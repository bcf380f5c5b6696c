"""Quantization maths: uniform integer grids and mask-preserving GPTQ (pure torch)."""
