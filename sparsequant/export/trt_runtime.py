"""Run a built TensorRT decoder engine on CUDA tensors (TensorRT 10/11 name-based I/O API; GPU machines only).

The engine has the export's inputs: input_ids, attention_mask, position_ids (B, S) / (B, past + S) int64
and input.past_key_values.layers.N.{keys,values} (B, kv_heads, past, head_dim) in the graph's float type.
Nothing here runs on the CPU-only project machines; gpu_check.py drives it.
"""

from __future__ import annotations

from pathlib import Path


class TrtDecoder:  # pragma: no cover - needs a GPU and TensorRT
    def __init__(self, engine_path: Path) -> None:
        import tensorrt as trt
        import torch

        self._torch = torch
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not load the engine {engine_path} (built by another TensorRT?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: torch.from_numpy(trt.nptype(self.engine.get_tensor_dtype(n))(0).reshape(1)).dtype
                       for n in names}
        self.stream = torch.cuda.Stream()
        self._placeholder = torch.zeros(1, device="cuda")  # an address for empty (past = 0) tensors

    def random_feeds(self, batch: int, new_tokens: int, past: int) -> dict:
        """Inputs of one call: random ids, a full mask, positions after `past`, a random cache."""
        torch = self._torch
        feeds = {}
        for name in self.inputs:
            if name == "input_ids":
                feeds[name] = torch.randint(100, 1000, (batch, new_tokens), device="cuda")
            elif name == "attention_mask":
                feeds[name] = torch.ones(batch, past + new_tokens, dtype=torch.int64, device="cuda")
            elif name == "position_ids":
                feeds[name] = torch.arange(past, past + new_tokens, device="cuda").expand(batch, -1).contiguous()
            else:
                heads, head_dim = self.engine.get_tensor_shape(name)[1], self.engine.get_tensor_shape(name)[3]
                feeds[name] = torch.randn(batch, heads, past, head_dim, device="cuda").to(self.dtypes[name])
        return feeds

    def run(self, feeds: dict) -> dict:
        """One engine call on the stream; returns the output tensors (allocated for these shapes)."""
        torch = self._torch
        for name in self.inputs:
            tensor = feeds[name].to(self.dtypes[name]).contiguous()
            feeds[name] = tensor
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr() if tensor.numel() else
                                            self._placeholder.data_ptr())
        outputs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=self.dtypes[name], device="cuda")
            self.context.set_tensor_address(name, outputs[name].data_ptr() if outputs[name].numel() else
                                            self._placeholder.data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        self.stream.synchronize()
        return outputs
