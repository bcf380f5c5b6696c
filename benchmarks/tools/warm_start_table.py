"""Table + bar plot of finished warm-start runs, read from their last evaluate artifacts' manifests.

An evaluate stage inherits its input's metrics, so the last one of a chain holds the training record
(metrics.train) and every perplexity measured along the chain. No model is loaded.

    .venv/bin/python benchmarks/tools/warm_start_table.py \
        --row "SparseGPT -> CAST=runs/warm_131k/06_eval_wiki_full" --row "SparseGPT alone=runs/warm_131k/02_eval_oneshot_wiki64" \
        --json benchmarks/results/warm_start/budget_131k.json

With --grid DIR every finished row of benchmarks/warm_start/grid.py in DIR is added (its last stage,
`NN_eval_builtin_<row>_<k>k` or `NN_eval_wiki_full_<row>_<k>k`, labelled `<row> @<k>k`), and a second plot
shows perplexity against tokens.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from sparsequant.manifest import read_manifest
from sparsequant.precision import cpu_model


def row_of(label: str, stage_dir: Path) -> dict:
    manifest = read_manifest(stage_dir)
    train = manifest.metrics.get("train", {})
    return {"name": label, "artifact": str(stage_dir), "perplexity": manifest.metrics.get("perplexity", {}),
            "tokens": train.get("tokens"), "train_s": train.get("seconds"), "init": train.get("init", {}).get("method"),
            "kept_from_one_shot_mask": train.get("kept_from_one_shot_mask"),
            "train_heldout_ppl": train.get("heldout_ppl_pruned"), "lineage": [e.get("stage") for e in
                                                                                       manifest.lineage]}


GRID_STAGE = re.compile(r"(?P<index>\d\d)_eval_(builtin|wiki_full)_(?P<row>.+)_(?P<k>\d+)k")


def grid_rows(output_dir: Path) -> list[tuple[str, Path]]:
    """(label, last finished evaluate dir) of every grid row in `output_dir`, by row then budget."""
    last: dict[tuple[str, int], tuple[str, Path]] = {}
    for d in output_dir.iterdir():
        if (m := GRID_STAGE.fullmatch(d.name)) and (d / "sparsequant.json").is_file():
            key = (m["row"], int(m["k"]))
            if key not in last or m["index"] > last[key][0]:
                last[key] = (m["index"], d)
    return [(f"{row} @{k}k", last[(row, k)][1]) for row, k in sorted(last)]


def plot_budgets(rows: list[dict], key: str, path: Path) -> None:
    """Perplexity against training tokens, one line per start -> method (the label before ' @')."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    lines: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        if r["tokens"] and key in r["perplexity"]:
            lines.setdefault(r["name"].split(" @")[0], []).append((r["tokens"], r["perplexity"][key]))
    for name, points in sorted(lines.items()):
        tokens, ppl = zip(*sorted(points), strict=True)
        ax.plot(tokens, ppl, marker="o", label=name)
    for r in rows:  # one-shot starts: no training tokens, a horizontal reference
        if not r["tokens"] and key in r["perplexity"]:
            ax.axhline(r["perplexity"][key], linestyle="--", linewidth=0.8, color="grey")
            ax.text(ax.get_xlim()[0], r["perplexity"][key], f" {r['name']}", fontsize=7, va="bottom")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training tokens")
    ax.set_ylabel(f"perplexity ({key})")
    ax.set_title("SmolLM2-135M 2:4 (lower is better)", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def column(rows: list[dict], prefix: str, exact: bool = False) -> str | None:
    """The perplexity key starting with `prefix` (or equal to it) that most rows have."""
    keys = [k for r in rows for k in r["perplexity"] if (k == prefix if exact else k.startswith(prefix))]
    return max(set(keys), key=keys.count) if keys else None


def plot(rows: list[dict], keys: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6))
    for ax, key in zip([axes] if len(keys) == 1 else axes, keys, strict=True):
        shown = [r for r in rows if key in r["perplexity"]]
        ax.barh([r["name"] for r in shown], [r["perplexity"][key] for r in shown], color="#4c72b0")
        for i, r in enumerate(shown):
            ax.text(r["perplexity"][key], i, f" {r['perplexity'][key]:.1f}", va="center", fontsize=8)
        ax.set_title(key, fontsize=9)
        ax.invert_yaxis()
    fig.suptitle("SmolLM2-135M 2:4: perplexity (lower is better)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--row", action="append", default=[], metavar="LABEL=STAGE_DIR")
    parser.add_argument("--grid", type=Path, help="add every finished benchmarks/warm_start/grid.py row in this dir")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    named = [(label, Path(path)) for label, _, path in (r.partition("=") for r in args.row)]
    rows = [row_of(label, path) for label, path in named + (grid_rows(args.grid) if args.grid else [])]
    # the full file has no window count in its key (evaluate without max_windows)
    keys = [k for k in (column(rows, "wiki@512", exact=True), column(rows, "wiki@512x64"), column(rows, "builtin")) if k]
    print("| run | tokens | " + " | ".join(keys) + " | training text held out | kept from start mask | train s |")
    print("|---|---|" + "---|" * len(keys) + "---|---|---|")
    for r in rows:
        cells = [f"{r['perplexity'][k]:.2f}" if k in r["perplexity"] else "—" for k in keys]
        kept = r["kept_from_one_shot_mask"]
        held = r["train_heldout_ppl"]
        print(f"| {r['name']} | {r['tokens'] or '—'} | " + " | ".join(cells) + f" | {'—' if held is None else f'{held:.2f}'}"
              f" | {'—' if kept is None else f'{kept:.7f}'} | {r['train_s'] or '—'} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"cpu": cpu_model(), "columns": keys, "rows": rows}, indent=2) + "\n")
    plot(rows, keys, args.json.with_suffix(".png"))
    if args.grid and (wiki := column(rows, "wiki@512x64")):
        plot_budgets(rows, wiki, args.json.with_name(args.json.stem + "_tokens.png"))


if __name__ == "__main__":
    main()
