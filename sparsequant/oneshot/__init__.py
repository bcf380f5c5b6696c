"""Calibrated one-shot methods (Wanda, SparseGPT, GPTQ): layer-by-layer statistics and the OBS maths."""
