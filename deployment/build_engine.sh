#!/usr/bin/env bash
# Build a TensorRT engine with 2:4 sparse kernels from an export_onnx artifact, using trtexec.
#   deployment/build_engine.sh ARTIFACT_DIR [MAX_BATCH] [MAX_TOKENS]
# Export for TensorRT first (export_onnx: {target: tensorrt}): the parser takes only INT8/INT4 codes with
# zero point 0, which the default ONNX Runtime int4 export (UINT4, zero points) is not.
# TensorRT 11 builds strongly typed only (the graph's types: fp16 for target: tensorrt float exports);
# on TensorRT 10 set STRONGLY_TYPED=1 for the same, else the legacy --fp16 (--int8 with Q/DQ) flags are used.
set -euo pipefail
artifact=${1:?usage: build_engine.sh ARTIFACT_DIR [MAX_BATCH] [MAX_TOKENS]}
max_batch=${2:-8}
max_tokens=${3:-2048}
onnx="$artifact/exports/model.onnx"
[[ -f "$onnx" ]] || { echo "error: $onnx not found; run an export_onnx stage first" >&2; exit 2; }

major=$(python3 -c "import tensorrt; print(tensorrt.__version__.split('.')[0])")
# The static check: parser rules of this TensorRT major, and which GEMMs can run sparse (per GEMM).
python3 - "$artifact" "$major" <<'EOF'
import sys
from sparsequant.export.trt_check import check_export
from sparsequant.summary import print_tensorrt_check
checks = {k: v for k, v in check_export(sys.argv[1] + "/exports").items() if k == sys.argv[2]}
print_tensorrt_check(checks)
if not all(c["parser_ok"] for c in checks.values()):
    sys.exit("error: TensorRT would reject this graph (see above); re-export with export_onnx target: tensorrt")
EOF

heads=$(python3 -c "import json; c=json.load(open('$artifact/config.json')); print(c['num_key_value_heads'])")
head_dim=$(python3 -c "import json; c=json.load(open('$artifact/config.json')); print(c.get('head_dim') or c['hidden_size'] // c['num_attention_heads'])")
layers=$(python3 -c "import json; c=json.load(open('$artifact/config.json')); print(c['num_hidden_layers'])")
if [[ "$major" -ge 11 || "${STRONGLY_TYPED:-0}" == 1 ]]; then
  precision="--stronglyTyped"
elif python3 -c "import onnx,sys; g=onnx.load('$onnx', load_external_data=False); sys.exit(0 if any(n.op_type=='QuantizeLinear' for n in g.graph.node) else 1)"; then
  precision="--fp16 --int8"
else
  precision="--fp16"
fi

shapes() {  # $1 = batch, $2 = new tokens, $3 = past tokens
  local s="input_ids:$1x$2,position_ids:$1x$2,attention_mask:$1x$(($2 + $3))"
  for ((i = 0; i < layers; i++)); do
    s+=",input.past_key_values.layers.$i.keys:$1x${heads}x$3x${head_dim}"
    s+=",input.past_key_values.layers.$i.values:$1x${heads}x$3x${head_dim}"
  done
  echo "$s"
}

echo "TensorRT $major.x precision=$precision layers=$layers kv_heads=$heads head_dim=$head_dim"
trtexec --onnx="$onnx" --saveEngine="$artifact/exports/model.engine" \
  --sparsity=enable $precision \
  --minShapes="$(shapes 1 1 0)" --optShapes="$(shapes 1 128 512)" --maxShapes="$(shapes "$max_batch" "$max_tokens" "$max_tokens")" \
  --profilingVerbosity=detailed --exportLayerInfo="$artifact/exports/engine_layers.json" \
  --verbose 2>&1 | tee "$artifact/exports/trtexec.log"

echo "--- layers whose chosen tactic is sparse (from the engine's layer information):"
python3 - "$artifact/exports/engine_layers.json" <<'EOF'
import json, sys
from sparsequant.export.trt_build import sparse_tactics
t = sparse_tactics(open(sys.argv[1]).read())
print(f"{len(t['sparse_layers'])} sparse, {len(t['dense_gemm_layers'])} dense GEMM/conv, {len(t['myelin_layers'])} Myelin regions")
print("\n".join(t["sparse_layers"]) or "none: expect no speed-up from 2:4 (see the per-GEMM check above)")
EOF
