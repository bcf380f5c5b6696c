"""sparsequant: turn a dense LLM into an exact N:M-sparse (and optionally quantized) model.

Importing the package imports nothing heavy (no torch, no transformers); see tests/unit/test_lean_import.py.
"""

__version__ = "0.1.0"
