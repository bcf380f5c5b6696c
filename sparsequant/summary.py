"""Human-readable output of the CLI (rich tables); library code never prints."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sparsequant.artifact import Artifact


def _console(console: Console | None) -> Console:
    if console is not None:
        return console
    console = Console()
    return console if console.is_terminal else Console(width=120)  # logs and CI: do not wrap at 80


def _headline_metrics(artifact: Artifact) -> str:
    ppl = artifact.manifest.metrics.get("perplexity", {})
    return escape(", ".join(f"{v:.2f} ({k})" for k, v in ppl.items())) or "-"


def _quantization(artifact: Artifact) -> str:
    q = artifact.manifest.quantization
    if not q:
        return "-"
    grid = f"g{q.group_size}" if q.group_size else "per-channel"
    return f"{q.method} W{q.bits} {grid}"


def print_run_summary(result, console: Console | None = None) -> None:
    console = _console(console)
    table = Table(title="sparsequant run")
    for column in ("stage", "status", "time (s)", "sparsity", "quantization", "perplexity"):
        table.add_column(column)
    for outcome in result.outcomes:
        artifact = Artifact.load(outcome.path, verify=False)
        sparsity = artifact.manifest.sparsity
        sp = f"{sparsity.pattern}, {sparsity.layers} layers, zeros {sparsity.zero_fraction:.4f}" if sparsity else "dense"
        table.add_row(outcome.stage_id, outcome.status, f"{outcome.seconds:.1f}", sp, _quantization(artifact),
                      _headline_metrics(artifact))
    console.print(table)
    console.print(f"artifacts in {result.final.path.parent}; final: {result.final.path.name}")


def print_manifest(artifact: Artifact, verified=None, console: Console | None = None) -> None:
    console = _console(console)
    m = artifact.manifest
    console.print(f"[bold]{artifact.path}[/bold]  (stage {m.stage.name}, {m.created_at}, sparsequant {m.sparsequant_version})")
    console.print(f"model: {m.model.architecture}, {m.model.dtype}, {m.model.num_parameters:,} parameters, "
                  f"{len(m.model.files)} files")
    console.print("lineage: " + " -> ".join(entry.get("stage", "?") for entry in m.lineage))
    if m.sparsity:
        console.print(f"sparsity: {m.sparsity.pattern} on {m.sparsity.layers} layers, zero fraction "
                      f"{m.sparsity.zero_fraction:.4f}, excluded {m.sparsity.exclude}")
    if m.quantization:
        console.print(f"quantization: {m.quantization.model_dump(exclude_none=True)}")
    for key, value in m.metrics.get("perplexity", {}).items():
        console.print(escape(f"perplexity {key}: {value:.4f}"))
    for warning in m.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    if verified is not None:
        status = "[green]OK[/green]" if verified.ok else "[red]FAILED[/red]"
        console.print(f"verify: checksums {len(m.model.files) - len(verified.checksum_failures)}/{len(m.model.files)}, "
                      f"N:M layers checked {verified.layers_checked}, on-grid layers checked "
                      f"{verified.grid_layers_checked}: {status}")
        for line in verified.failures:
            console.print(f"  [red]{line}[/red]")


def print_tensorrt_check(checks: dict[str, dict], console: Console | None = None) -> None:
    """Per TensorRT major: does the parser take the export, and per GEMM, sparse-eligible or why not."""
    console = _console(console)
    for check in checks.values():
        verdict = "[green]parser accepts the graph[/green]" if check["parser_ok"] else \
            f"[red]parser rejects the graph ({check['problem_count']} problems)[/red]"
        console.print(f"TensorRT {check['tensorrt']}: {verdict}; {check['sparse_eligible']} of {check['gemms']} "
                      "GEMMs sparse-eligible")
        for problem in check["problems"][:5]:
            console.print(f"  [red]{escape(problem)}[/red]")
        table = Table(show_header=True, box=None, padding=(0, 1))
        for column in ("GEMM", "weight", "sparse", "why"):
            table.add_column(column)
        for gemm in check["per_gemm"]:
            table.add_row(escape(gemm["layer"] or gemm["node"]), gemm["weight_type"],
                          "yes" if gemm["sparse_eligible"] else "no", escape(gemm["why"]))
        console.print(table)


def print_report(report, console: Console | None = None) -> None:
    """The report's main columns as a rich table (the full table is in report.md / report.csv)."""
    from sparsequant.report.render import cell

    console = _console(console)
    wanted = [c for c in report.columns if c in ("run", "artifact", "recipe", "sparsity", "bits") or
              c.startswith(("ppl ", "acc ")) or c in ("size packed MB", "torch prefill s", "total s")]
    table = Table(title="sparsequant report")
    for column in wanted:
        table.add_column(escape(column))
    for row in report.rows:
        table.add_row(*(escape(cell(row.get(c))) for c in wanted))
    console.print(table)
    console.print("wrote " + ", ".join(str(f) for f in report.files))


def print_scaling_law(result: dict, console: Console | None = None) -> None:
    console = _console(console)
    fit = result["fit"]
    console.print(f"L(D) = {fit['E']:.4g} + {fit['A']:.4g} · D^(-{fit['alpha']:.4g})   R² = {fit['r2']:.4f} "
                  f"({fit['points']} points of {result['metric']})")
    if "holdout" in result:
        h = result["holdout"]
        console.print(f"fit on the first {h['fit_points']} points: E={h['fit']['E']:.4g}, A={h['fit']['A']:.4g}, "
                      f"α={h['fit']['alpha']:.4g}; predicting the {len(h['held_out'])} later points: mean |error| "
                      f"{h['mean_abs_error_pct']:.2f} %")
        for p in h["held_out"]:
            console.print(f"  D={p['tokens']:.4g}: observed {p['observed']:.4g}, predicted {p['predicted']:.4g} "
                          f"({p['error_pct']:+.2f} %)")
    if "target" in result:
        tokens = result["target"]["tokens"]
        console.print(f"perplexity {result['target']['perplexity']:g} needs "
                      + (f"{tokens:.4g} tokens" if tokens else "more than any budget (below the fitted floor E)"))
    if "plot" in result:
        console.print(f"plot: {result['plot']}")
