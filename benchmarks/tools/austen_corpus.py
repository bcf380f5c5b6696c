"""Write Jane Austen's six novels as a general-English training text for the CAST benchmarks.

Why: the built-in corpus is Python documentation, far from WikiText, and CAST vs masked KD differ most
out of domain (benchmarks/history.md §3e-§3f). The paper trains on a general pretraining mix; the closest
general English prose this machine can fetch (PyPI and Debian only, no dataset hub) is the Debian package
r-cran-janeaustenr (public-domain Project Gutenberg texts, 3.95 M characters, ~1 M SmolLM2 tokens).

No R and no root needed: `apt-get download` fetches the .deb as any user, `dpkg-deb -x` unpacks it, and the
PyPI package `rdata` reads R's lazy-load database (data/Rdata.rdx = gzip'd index, Rdata.rdb = zlib'd objects).

Usage:   make corpus        (= pip install rdata, then this script with --out-dir runs/corpora)

Writes austen_train.txt (five novels) and austen_heldout.txt (Persuasion, never trained on), one
paragraph per line as in WikiText: the package keeps Gutenberg's hard line wraps at ~70 characters.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import subprocess
import tempfile
import zlib
from pathlib import Path

from sparsequant.fsutil import atomic_write_text

TRAIN = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey")
HELDOUT = ("persuasion",)
PACKAGE = "r-cran-janeaustenr"
DEB_SHA256 = "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95"  # 1.0.0-1, Debian bookworm
DATA_DIR = "usr/lib/R/site-library/janeaustenr/data"


def fetch_package(work: Path) -> Path:
    """Download and unpack the Debian package; returns its R data directory."""
    try:
        subprocess.run(["apt-get", "download", PACKAGE], cwd=work, check=True, capture_output=True)
        deb = next(work.glob(f"{PACKAGE}_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(work / "x")], check=True, capture_output=True)
    except (FileNotFoundError, StopIteration, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"cannot fetch the Debian package {PACKAGE} ({exc}). This needs apt-get and dpkg-deb "
                         "(Debian/Ubuntu) and a reachable Debian mirror; run `apt-get update` first if apt "
                         "knows no package lists.") from None
    digest = hashlib.sha256(deb.read_bytes()).hexdigest()
    if digest != DEB_SHA256:  # another version may hold other text: say so rather than train on it silently
        print(f"note: {deb.name} has sha256 {digest}, not the {DEB_SHA256[:12]}... the benchmarks used")
    return work / "x" / DATA_DIR


def read_novels(data_dir: Path) -> dict[str, list[str]]:
    """Every character vector in the package's lazy-load database: name -> printed lines."""
    import warnings

    import rdata  # only this script needs it: `make corpus` installs it

    warnings.filterwarnings("ignore", message="Unknown file type")  # the .rdb records carry no RDS header

    def parse(raw: bytes):
        return rdata.conversion.convert(rdata.parser.parse_data(raw))

    index = parse(gzip.decompress((data_dir / "Rdata.rdx").read_bytes()))
    blob = (data_dir / "Rdata.rdb").read_bytes()
    novels = {}
    for name, (offset, length) in index["variables"].items():
        # each record: 4-byte big-endian uncompressed length, then a zlib stream of one serialized object
        record = blob[int(offset): int(offset) + int(length)]
        value = parse(zlib.decompress(record[4:]))
        if str(name) in TRAIN + HELDOUT:
            novels[str(name)] = ["" if line is None else str(line) for line in value]
    return novels


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


def write_text(path: Path, names: tuple[str, ...], novels: dict[str, list[str]]) -> dict:
    paragraphs = [p for name in names for p in reflow(novels[name])]
    text = "\n".join(paragraphs) + "\n"
    atomic_write_text(path, text)  # a half-written corpus never has the final name
    return {"file": path.name, "novels": list(names), "paragraphs": len(paragraphs), "chars": len(text)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", type=Path, default=Path("runs/corpora"))
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        novels = read_novels(fetch_package(Path(work)))
    summary = [write_text(args.out_dir / "austen_train.txt", TRAIN, novels),
               write_text(args.out_dir / "austen_heldout.txt", HELDOUT, novels)]
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
