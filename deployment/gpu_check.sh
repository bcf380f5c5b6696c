#!/usr/bin/env bash
# On a machine with an NVIDIA GPU and TensorRT 10 or 11: export SmolLM2 2:4 (fp16, w8a8, int4) and a dense
# fp16 control, build each engine, print sparse-layer counts and batch-1/batch-8 prefill and decode latency.
# Exits 1 when an engine fails to build or 2:4 fp16 is slower than dense; 2 without TensorRT or a GPU.
set -euo pipefail
exec python3 -m sparsequant.export.gpu_check "$@"
