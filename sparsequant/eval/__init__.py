"""Evaluation: perplexity now; zero-shot, size, latency and reports come with later stages."""
