"""Every user mistake exits 2 with a one-paragraph message and no traceback."""

import subprocess
import sys

import pytest

from sparsequant.cli import main

BASE = "version: 1\ninput: {input}\noutput_dir: run\nstages:\n{stages}"
PRUNE = "  - stage: prune\n    config: {sparsity: {pattern: \"PAT\"}}\n"


def pipeline(tmp_path, stages=PRUNE.replace("PAT", "2:4"), input="tiny-llama"):
    path = tmp_path / "p.yaml"
    path.write_text(BASE.format(input=input, stages=stages))
    return str(path)


def user_error(capsys, argv, *fragments):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_unknown_stage(tmp_path, capsys):
    user_error(capsys, ["run", pipeline(tmp_path, "  - stage: prun\n")], "unknown stage 'prun'", "did you mean 'prune'")


def test_unknown_key_and_wrong_type(tmp_path, capsys):
    stages = "  - stage: prune\n    config: {methd: magnitude}\n  - stage: evaluate\n    config: {seq_len: abc}\n"
    user_error(capsys, ["validate", pipeline(tmp_path, stages)], "2 problem(s)", "unknown key 'methd'",
               "did you mean 'method'", "line 6", "line 8", "seq_len")


def test_missing_input_path(tmp_path, capsys):
    user_error(capsys, ["run", pipeline(tmp_path, input="models/nope")], "model source 'models/nope' not found")


def test_file_that_is_not_a_model(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    user_error(capsys, ["run", pipeline(tmp_path, input="notes.txt")], "is not a model")
    (tmp_path / "broken.gguf").write_bytes(b"not a gguf at all")
    user_error(capsys, ["run", pipeline(tmp_path, input="broken.gguf")], "could not load a causal LM")


def test_pattern_not_dividing_input_size(tmp_path, capsys):
    user_error(capsys, ["run", pipeline(tmp_path, PRUNE.replace("PAT", "1:5"))], "not 1:5-compatible",
               "input size 64 is not divisible by M=5", "sparsity.exclude")


def test_bad_checksum_inspect(tmp_path, capsys, tiny_artifact):
    assert main(["inspect", str(tiny_artifact.path)]) == 0
    capsys.readouterr()
    (tiny_artifact.path / "tokenizer.json").write_text("{}")
    user_error(capsys, ["inspect", str(tiny_artifact.path)], "tokenizer.json has a different sha256")


def test_output_dir_holds_other_artifact(tmp_path, capsys):
    assert main(["run", pipeline(tmp_path), "--no-progress"]) == 0
    user_error(capsys, ["run", pipeline(tmp_path, PRUNE.replace("PAT", "4:8")), "--no-progress"],
               "already holds a different artifact", "--force")
    assert main(["run", pipeline(tmp_path, PRUNE.replace("PAT", "4:8")), "--no-progress", "--force"]) == 0


def test_text_too_short(tmp_path, capsys):
    (tmp_path / "short.txt").write_text("too short")
    stages = "  - stage: evaluate\n    config: {text: short.txt, seq_len: 64}\n"
    user_error(capsys, ["run", pipeline(tmp_path, stages), "--no-progress"], "fewer than one window of seq_len=64")


def test_missing_text_and_pipeline(tmp_path, capsys):
    stages = "  - stage: evaluate\n    config: {text: missing.txt}\n"
    user_error(capsys, ["run", pipeline(tmp_path, stages), "--no-progress"], "missing.txt does not exist")
    user_error(capsys, ["run", str(tmp_path / "none.yaml")], "cannot read pipeline file")


def test_inspect_non_artifact(tmp_path, capsys):
    user_error(capsys, ["inspect", str(tmp_path)], "not a complete sparsequant artifact")


def test_process_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sparsequant", "validate", pipeline(tmp_path, "  - stage: nope\n")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


@pytest.mark.parametrize("argv", [["stages"], ["validate", "pipelines/smoke.yaml"]])
def test_lean_commands_do_not_import_heavy_libraries(argv):
    code = ("import sys; from sparsequant.cli import main; main(%r); "
            "heavy = {'transformers', 'peft', 'onnxruntime', 'tensorrt'} & set(sys.modules); "
            "print(sorted(heavy)); print('torch' in sys.modules)") % argv
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    lines = out.strip().splitlines()
    assert lines[-2] == "[]"
    if argv == ["stages"]:
        assert lines[-1] == "False"


def test_generate_torch_and_missing_onnx_export(tmp_path, capsys, tiny_artifact):
    assert main(["generate", str(tiny_artifact.path), "--prompt", "ab", "--max-new-tokens", "3"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("ab") and "[torch] 3 new tokens" in captured.err
    user_error(capsys, ["generate", str(tiny_artifact.path), "--prompt", "ab", "--backend", "onnxruntime"],
               "has no exports/model.onnx", "run an export_onnx stage first")


def test_eval_options_are_validated_like_a_stage_config(capsys, tiny_artifact):
    user_error(capsys, ["eval", str(tiny_artifact.path), "--seq-len", "1", "--text", "builtin"],
               "sparsequant eval: 1 bad option(s)", "--seq-len: Input should be greater than or equal to 2")
