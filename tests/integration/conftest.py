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
