"""Export to ONNX (checked in ONNX Runtime) and TensorRT engines (built on a GPU machine)."""
