import os

import pytest

from sparsequant.models import builtin_gguf_path


@pytest.fixture(scope="session")
def smollm2_gguf():
    path = builtin_gguf_path("smollm2-135m")
    if not path.is_file():
        message = f"SmolLM2 GGUF not cached at {path}; run `sparsequant fetch smollm2-135m` (make setup does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def smollm2_artifact(smollm2_gguf, tmp_path_factory):
    """SmolLM2-135M imported once per test session through the real import stage."""
    from sparsequant.pipeline import import_to

    return import_to("smollm2-135m", tmp_path_factory.mktemp("smollm2") / "import", progress=False)


@pytest.fixture
def run_on_smollm2(smollm2_artifact, tmp_path):
    """run_on_smollm2(stages_yaml) -> PipelineResult of those stages on the imported SmolLM2 (in tmp_path/run)."""
    from sparsequant.config import load_pipeline
    from sparsequant.pipeline import run_pipeline
    from sparsequant.registry import Registry

    def run(stages: str):
        path = tmp_path / "p.yaml"
        path.write_text(f"version: 1\ninput: {smollm2_artifact.path}\noutput_dir: run\nstages:\n{stages}")
        registry = Registry.default()
        return run_pipeline(load_pipeline(path, registry), registry, progress=False)

    return run
