#!/usr/bin/env bash
# Build a TensorRT engine with 2:4 sparse kernels from an export_onnx artifact, using trtexec.
#   deployment/build_engine.sh ARTIFACT_DIR [MAX_BATCH] [MAX_TOKENS]
# Precision comes from the manifest: fp16 for float exports, int8 when the graph has Q/DQ nodes.
# (int4 weight-only exports build too, but TensorRT has no sparse int4 weight-only kernels.)
set -euo pipefail
artifact=${1:?usage: build_engine.sh ARTIFACT_DIR [MAX_BATCH] [MAX_TOKENS]}
max_batch=${2:-8}
max_tokens=${3:-2048}
onnx="$artifact/exports/model.onnx"
[[ -f "$onnx" ]] || { echo "error: $onnx not found; run an export_onnx stage first" >&2; exit 2; }

weights=$(python3 -c "import json,sys; m=json.load(open('$artifact/sparsequant.json')); print(m['metrics'].get('export_onnx', {}).get('weights', 'float32'))")
heads=$(python3 -c "import json; c=json.load(open('$artifact/config.json')); print(c['num_key_value_heads'])")
head_dim=$(python3 -c "import json; c=json.load(open('$artifact/config.json')); print(c.get('head_dim') or c['hidden_size'] // c['num_attention_heads'])")
layers=$(python3 -c "import json; c=json.load(open('$artifact/config.json')); print(c['num_hidden_layers'])")
precision="--fp16"
if python3 -c "import onnx,sys; g=onnx.load('$onnx', load_external_data=False); sys.exit(0 if any(n.op_type=='QuantizeLinear' for n in g.graph.node) else 1)"; then
  precision="--fp16 --int8"
fi

shapes() {  # $1 = batch, $2 = new tokens, $3 = past tokens
  local s="input_ids:$1x$2,position_ids:$1x$2,attention_mask:$1x$(($2 + $3))"
  for ((i = 0; i < layers; i++)); do
    s+=",input.past_key_values.layers.$i.keys:$1x${heads}x$3x${head_dim}"
    s+=",input.past_key_values.layers.$i.values:$1x${heads}x$3x${head_dim}"
  done
  echo "$s"
}

echo "weights=$weights precision=$precision layers=$layers kv_heads=$heads head_dim=$head_dim"
trtexec --onnx="$onnx" --saveEngine="$artifact/exports/model.engine" \
  --sparsity=enable $precision \
  --minShapes="$(shapes 1 1 0)" --optShapes="$(shapes 1 128 512)" --maxShapes="$(shapes "$max_batch" "$max_tokens" "$max_tokens")" \
  --verbose 2>&1 | tee "$artifact/exports/trtexec.log"

echo "--- layers TensorRT found eligible for / built with sparse kernels:"
grep -E "\(Sparsity\)" "$artifact/exports/trtexec.log" || echo "none reported (see the log)"
