from pathlib import Path
from typing import ClassVar

import pytest

from sparsequant.config import apply_overrides, load_pipeline
from sparsequant.errors import ConfigError
from sparsequant.registry import Registry
from sparsequant.stage import StageConfig

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


GOOD = """\
version: 1
input: tiny-llama
stages:
  - stage: prune
    config:
      sparsity: {pattern: "2:4"}
  - stage: evaluate
    config: {text: x.txt, seq_len: 64}
"""


def test_good_pipeline_validates(tmp_path):
    loaded = load_pipeline(write(tmp_path, GOOD), Registry.default())
    assert [s.stage for s in loaded.spec.stages] == ["prune", "evaluate"]
    assert loaded.stage_configs[1].seq_len == 64


def test_every_problem_reported_with_lines_and_hints(tmp_path):
    text = """\
version: 1
input: tiny-llama
stages:
  - stage: prnue
  - stage: evaluate
    config:
      seq_lenn: 64
      batch_size: many
"""
    with pytest.raises(ConfigError) as err:
        load_pipeline(write(tmp_path, text), Registry.default())
    message = str(err.value)
    assert "3 problem(s)" in message
    assert "line 4" in message and "unknown stage 'prnue'; did you mean 'prune'?" in message
    assert "line 7" in message and "unknown key 'seq_lenn'; did you mean 'seq_len'?" in message
    assert "line 8" in message and "stages[1].config.batch_size" in message


def test_unknown_top_level_key_and_missing_input(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_pipeline(write(tmp_path, "version: 1\nstage:\n  - stage: prune\n"), Registry.default())
    message = str(err.value)
    assert "unknown key 'stage'; did you mean 'stages'?" in message
    assert "input: Field required" in message


def test_nested_unknown_key_hint(tmp_path):
    text = GOOD.replace('{pattern: "2:4"}', '{patern: "2:4"}')
    with pytest.raises(ConfigError, match="did you mean 'pattern'"):
        load_pipeline(write(tmp_path, text), Registry.default())


def test_evaluate_sections_reject_unknown_keys(tmp_path):
    text = GOOD.replace("{text: x.txt, seq_len: 64}", "{text: x.txt, zeroshot: {taks: [sq_everyday_mc]}}")
    with pytest.raises(ConfigError, match="did you mean 'tasks'"):
        load_pipeline(write(tmp_path, text), Registry.default())
    text = GOOD.replace("{text: x.txt, seq_len: 64}", "{latency: {backends: [tensorrt]}}")
    with pytest.raises(ConfigError, match="backends"):
        load_pipeline(write(tmp_path, text), Registry.default())


def test_bad_pattern_value(tmp_path):
    with pytest.raises(ConfigError, match="line 6.*pattern"):
        load_pipeline(write(tmp_path, GOOD.replace('"2:4"', '"5:4"')), Registry.default())


def test_set_overrides(tmp_path):
    loaded = load_pipeline(write(tmp_path, GOOD), Registry.default(),
                           ["stages.1.config.seq_len=32", "seed=7", "stages.0.config.sparsity.pattern=4:8"])
    assert loaded.stage_configs[1].seq_len == 32
    assert loaded.spec.seed == 7
    assert loaded.stage_configs[0].sparsity.pattern == "4:8"
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["seed"])
    with pytest.raises(ConfigError, match="not an index"):
        apply_overrides({"stages": []}, ["stages.3.config.x=1"])


def test_requires_chain_checked(tmp_path):
    class NeedsSparsity:
        name: ClassVar[str] = "needs_sparse"
        summary: ClassVar[str] = "test"
        Config = StageConfig
        requires: ClassVar[frozenset[str]] = frozenset({"sparsity"})
        provides: ClassVar[frozenset[str]] = frozenset()

        def __init__(self, config):
            self.config = config

        def run(self, artifact, ctx):
            raise NotImplementedError

    registry = Registry.default()
    registry.register(NeedsSparsity)
    bad = "version: 1\ninput: tiny-llama\nstages:\n  - stage: needs_sparse\n"
    with pytest.raises(ConfigError, match="needs \\['sparsity'\\]"):
        load_pipeline(write(tmp_path, bad), registry)
    good = "version: 1\ninput: tiny-llama\nstages:\n  - stage: prune\n  - stage: needs_sparse\n"
    load_pipeline(write(tmp_path, good), registry)


def test_not_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_pipeline(write(tmp_path, "stages: [\n"), Registry.default())
    with pytest.raises(ConfigError, match="cannot read pipeline file"):
        load_pipeline(tmp_path / "nope.yaml", Registry.default())


@pytest.mark.parametrize("path", sorted((REPO / "pipelines").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_pipelines_validate(path):
    load_pipeline(path, Registry.default())


def test_unquoted_pattern_explained(tmp_path):
    with pytest.raises(ConfigError, match='quoted, e.g. "2:4".*number 124'):
        load_pipeline(write(tmp_path, GOOD.replace('"2:4"', "2:4")), Registry.default())


def test_pipeline_targets_block_is_inherited_unless_a_stage_sets_its_own(tmp_path):
    text = """\
version: 1
input: tiny-llama
targets: {pattern: "4:8", exclude: ["*.down_proj"]}
stages:
  - stage: prune
  - stage: cast
    config: {sparsity: {exclude: ["*.k_proj"]}}
  - stage: gptq
  - stage: lora
    config: {include: ["*.q_proj"]}
"""
    prune, cast, gptq, lora = load_pipeline(write(tmp_path, text), Registry.default()).stage_configs
    assert prune.sparsity.pattern == "4:8" and prune.sparsity.exclude == ["*.down_proj"]
    assert prune.sparsity.include is None  # not given: every projection in the decoder layers
    assert cast.sparsity.pattern == "4:8" and cast.sparsity.exclude == ["*.k_proj"]  # the stage's own wins
    assert gptq.exclude == ["*.down_proj"] and gptq.include is None
    assert lora.include == ["*.q_proj"] and lora.exclude == ["*.down_proj"]
    with pytest.raises(ConfigError, match="unknown key 'inclde'"):
        load_pipeline(write(tmp_path, text.replace("targets: {pattern", "targets: {inclde: [], pattern")),
                      Registry.default())
