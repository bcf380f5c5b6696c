"""Write Jane Austen's six novels as a general-English training text for the CAST benchmarks.

Why: the built-in corpus is Python documentation, far from WikiText, and CAST vs masked KD differ most
out of domain (benchmarks/README.md §3e-§3f). The paper trains on a general pretraining mix; the closest
general English prose this machine can fetch (PyPI and Debian only, no dataset hub) is the Debian package
r-cran-janeaustenr (public-domain Project Gutenberg texts, 3.95 M characters, ~1 M SmolLM2 tokens).

Setup (once, as root):   apt-get install -y --no-install-recommends r-base-core r-cran-janeaustenr
Usage:                   .venv/bin/python benchmarks/austen_corpus.py --out-dir runs/corpora

Writes austen_train.txt (five novels) and austen_heldout.txt (Persuasion, never trained on), one
paragraph per line as in WikiText: the package keeps Gutenberg's hard line wraps at ~70 characters.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from sparsequant.fsutil import atomic_write_text

TRAIN = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey")
HELDOUT = ("persuasion",)


def novel_lines(name: str) -> list[str]:
    """The novel as the package stores it: a list of printed lines."""
    script = f'library(janeaustenr); x <- get("{name}"); writeLines(x, stdout(), useBytes = TRUE)'
    try:
        out = subprocess.run(["Rscript", "-e", script], check=True, capture_output=True).stdout
    except (FileNotFoundError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"cannot read {name!r} from R ({exc}). Install it with: apt-get install -y "
                         "--no-install-recommends r-base-core r-cran-janeaustenr") from None
    return out.decode("utf-8").split("\n")


def reflow(lines: list[str]) -> list[str]:
    """Join the hard-wrapped lines of each blank-line-separated paragraph into one line."""
    paragraphs, current = [], []
    for line in lines:
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return paragraphs


def write_text(path: Path, names: tuple[str, ...]) -> dict:
    paragraphs = [p for name in names for p in reflow(novel_lines(name))]
    text = "\n".join(paragraphs) + "\n"
    atomic_write_text(path, text)  # a half-written corpus never has the final name
    return {"file": path.name, "novels": list(names), "paragraphs": len(paragraphs), "chars": len(text)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", type=Path, default=Path("runs/corpora"))
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    summary = [write_text(args.out_dir / "austen_train.txt", TRAIN),
               write_text(args.out_dir / "austen_heldout.txt", HELDOUT)]
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
