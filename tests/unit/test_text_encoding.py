"""Our text files are UTF-8 whatever the locale says (Windows' cp1252, a POSIX locale with coercion off).

Each check runs in a child Python whose locale encoding is ASCII, where any open()/read_text() without
an explicit encoding raises UnicodeError on the first non-ASCII character.
"""

import json
import os
import subprocess
import sys
import textwrap

ASCII_LOCALE = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}


def run_under_ascii_locale(code: str, tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, **ASCII_LOCALE}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, encoding="utf-8")


def test_child_locale_is_really_ascii(tmp_path):
    # Guards the other tests: if the child coerced to UTF-8 they would pass without proving anything.
    done = run_under_ascii_locale("import locale; print(locale.getpreferredencoding(False))", tmp_path)
    assert done.stdout.strip() in ("ANSI_X3.4-1968", "ascii", "US-ASCII"), done.stdout


def test_atomic_write_and_pipeline_yaml_are_utf8(tmp_path):
    # The child's source stays ASCII (its command line is decoded with the ASCII locale too).
    (tmp_path / "p.yaml").write_bytes("""version: 1
input: tiny-llama   # modèle aléatoire — 2:4
stages:
  - stage: prune
    config: {sparsity: {pattern: "2:4"}}
""".encode("utf-8"))
    done = run_under_ascii_locale("""
        from pathlib import Path
        from sparsequant.config import load_pipeline
        from sparsequant.fsutil import atomic_write_text
        from sparsequant.registry import Registry

        load_pipeline(Path("p.yaml"), Registry.default())
        atomic_write_text(Path("note.txt"), "perplexity \\u00d7 2 \\u2014 caf\\u00e9")
        """, tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "note.txt").read_bytes() == "perplexity × 2 — café".encode("utf-8")


def test_manifest_with_raw_utf8_is_read(tmp_path):
    # Our writer escapes non-ASCII (json.dumps' default), but a manifest edited by hand or by another
    # tool may hold raw UTF-8; reading it must not depend on the locale.
    manifest = {"sparsequant_version": "0", "created_at": "2026-12-06T00:00:00Z",
                "stage": {"name": "import", "id": "import", "config_sha256": "0"},
                "model": {"architecture": "LlamaForCausalLM", "dtype": "float32", "num_parameters": 1},
                "warnings": ["modèle — 135M"]}
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "sparsequant.json").write_bytes(json.dumps(manifest, ensure_ascii=False).encode("utf-8"))
    done = run_under_ascii_locale("""
        from pathlib import Path
        from sparsequant.manifest import read_manifest
        print(ascii(read_manifest(Path("a")).warnings[0]))
        """, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ascii("modèle — 135M")
