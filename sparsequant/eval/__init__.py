"""Evaluation maths: perplexity (PyTorch and ONNX Runtime), zero-shot (lm-eval), size, latency, scaling law."""
