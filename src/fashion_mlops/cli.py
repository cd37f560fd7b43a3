"""`fashion-mlops validate | download | check-store | sweep | evaluate | export | predict | make-sample`: one
command per DVC stage, batch prediction, and the checks."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from fashion_mlops import interrupts
from fashion_mlops.config import Params, check_against_manifest, check_cluster_store, load_params
from fashion_mlops.data.manifest import Manifest, load_manifest
from fashion_mlops.errors import UserError
from fashion_mlops.inference import RUNTIMES
from fashion_mlops.reports import Reports
from fashion_mlops.tracking.client_settings import apply_client_defaults
from fashion_mlops.tracking.workspace import anchored_params

INTERRUPTED = 130

Command = Callable[[Params, Manifest, argparse.Namespace], None]


def cmd_validate(params: Params, manifest: Manifest, args: argparse.Namespace) -> None:
    cells = params.cells()
    if params.tracking.enabled:
        from fashion_mlops.tracking.store import check_reachable, tracking_uri

        check_reachable(tracking_uri(params))
    sweep = params.sweep
    if sweep.search != "grid":
        keys = ", ".join(sweep.choices())
        prune = f", pruning: {sweep.prune}" if sweep.prune != "none" else ""
        print(f"{args.params}: valid; a {sweep.search} search of {sweep.trials} trial(s) over {keys}{prune}")
        return
    print(f"{args.params}: valid; {len(cells)} run(s), architecture(s): {', '.join(sorted({c.arch for c in cells}))}")


def cmd_download(params: Params, manifest: Manifest, args: argparse.Namespace) -> None:
    from fashion_mlops.data.download import download_dataset

    for line in download_dataset(
        manifest, params.data.sources, Path(params.data.dir), params.data.timeout_s, params.data.deadline_s
    ):
        print(line)


def cmd_check_store(params: Params, manifest: Manifest, args: argparse.Namespace) -> None:
    from fashion_mlops.store_check import run_store_check

    for line in run_store_check(params, Reports(Path(args.reports))):
        print(line)


def cmd_sweep(params: Params, manifest: Manifest, args: argparse.Namespace) -> None:
    from fashion_mlops import distributed
    from fashion_mlops.tracking.exporter import start_exporter

    launched = distributed.world()  # one process, or one of torchrun's
    try:
        distributed.check_sweep(params, launched)
    except UserError as error:
        if launched.leader:
            raise
        raise SystemExit(error.exit_code) from None  # every rank finds the same fault: rank 0 alone says so
    # first: it sets up the store while this process imports torch. Under torchrun, rank 0 alone tracks
    export = start_exporter(params) if launched.leader else None
    from fashion_mlops.sweep import run_sweep

    with distributed.process_group(launched):
        run_sweep(params, Path(args.params), manifest, Reports(Path(args.reports)), export)


def cmd_evaluate(params: Params, manifest: Manifest, args: argparse.Namespace) -> None:
    from fashion_mlops.evaluate import run_evaluate

    result = run_evaluate(params, manifest, Reports(Path(args.reports)))
    verdict = "promoted to" if result["promoted"] else "did not beat the holder of"
    print(
        f"test accuracy {result['test_accuracy']:.4f}, loss {result['test_loss']:.4f}; "
        f"{result['model_name']} v{result['model_version']} {verdict} @{result['alias']} "
        f"(now v{result['champion_version']})"
    )


def cmd_export(params: Params, manifest: Manifest, args: argparse.Namespace) -> None:
    from fashion_mlops.export.stage import run_export

    report = run_export(params, manifest, Reports(Path(args.reports)))
    for runtime, figures in report["runtimes"].items():
        print(
            f"{runtime:>8}: test accuracy {figures['test_accuracy']:.4f}, agreement {figures['agreement']:.4%}, "
            f"max |dp| {figures['max_probability_diff']:.1e}, batch-1 p50 {figures['latency_ms_p50']:.3f} ms, "
            f"{figures['images_per_s_batch256']:.0f} images/s at batch 256"
        )
    onnx = report["onnx"]
    registered = f"{onnx['model_name']} v{onnx['model_version']}"
    print(f"wrote {onnx['path']} and {report['openvino']['path']}; registered {registered}")
    if not onnx["has_alias"]:
        print(
            f"note: {report['model_name']} v{report['model_version']} no longer holds @{report['alias']} (another "
            f"evaluation moved it since this one), so {registered} was registered without the alias",
            file=sys.stderr,
        )


def cmd_predict(params: Params, manifest: Manifest, args: argparse.Namespace) -> None:
    from fashion_mlops.errors import DataError
    from fashion_mlops.inference.predict import run_predict

    outcome = run_predict(params, manifest, args.paths, args.runtime, args.model, args.out)
    where = f" to {args.out}" if args.out else ""
    print(f"{outcome.rows} image(s) classified with {outcome.model} ({args.runtime}){where}", file=sys.stderr)
    if outcome.unreadable:
        raise DataError(
            f"{len(outcome.unreadable)} file(s) could not be read (each named above); the rest were classified"
        )


def make_sample(args: argparse.Namespace) -> None:
    from fashion_mlops.data.sample import write_sample_dataset

    manifest = write_sample_dataset(Path(args.out), n_train=args.train, n_test=args.test, seed=args.seed)
    print(f"wrote a synthetic MNIST-format dataset to {args.out} (manifest: {manifest})")


COMMANDS: dict[str, Command] = {
    "validate": cmd_validate,
    "download": cmd_download,
    "check-store": cmd_check_store,
    "sweep": cmd_sweep,
    "evaluate": cmd_evaluate,
    "export": cmd_export,
    "predict": cmd_predict,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fashion-mlops", description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--reports", default="reports", help="reports directory (default: reports)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("validate", help="check params.yaml and print the grid size")
    sub.add_parser("download", help="fetch and verify the dataset into data.dir")
    sub.add_parser("check-store", help="remove the reports whose runs, models or events the tracking store lost")
    sub.add_parser("sweep", help="train every grid cell, track it, pick the best on validation")
    sub.add_parser("evaluate", help="test the best model, register it, move the alias if better")
    sub.add_parser("export", help="export the champion to ONNX and OpenVINO, check parity, register the ONNX model")
    predict = sub.add_parser(
        "predict",
        help="classify IDX, PNG or JPEG files (or folders of them) into CSV",
        description="Class probabilities for each image, as CSV: file, index, label, then one column per class. "
        "A 28x28 grayscale image is used as it is; other pictures are converted the way Fashion-MNIST was made.",
    )
    predict.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="IDX, PNG or JPEG files, or folders")
    predict.add_argument("--runtime", choices=RUNTIMES, default="torch", help="default: torch")
    predict.add_argument("--model", help="a model URI or file (default: the registry's champion for the runtime)")
    predict.add_argument("--out", type=Path, help="CSV file to write (default: standard output)")
    sample = sub.add_parser("make-sample", help="write the small synthetic IDX dataset that data.dvc tracks")
    sample.add_argument("--out", default="data/sample")
    sample.add_argument("--train", type=int, default=2000)
    sample.add_argument("--test", type=int, default=500)
    sample.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, interrupts.raise_now)
    logging.basicConfig(level=os.environ.get("FASHION_MLOPS_LOG", "WARNING"))
    apply_client_defaults()
    if args.command == "make-sample":
        make_sample(args)  # needs no params
        return 0
    try:
        params = load_params(Path(args.params))
        manifest = load_manifest(params.data.manifest)
        check_against_manifest(params, manifest)
        params = anchored_params(params)  # in `dvc exp run --queue`'s temporary copy: the repository's store and logs
        from fashion_mlops.tracking.store import tracking_uri

        check_cluster_store(params, tracking_uri(params))
    except UserError as error:
        print(f"error: {one_line(str(error))}", file=sys.stderr)
        return error.exit_code
    try:
        COMMANDS[args.command](params, manifest, args)
    except KeyboardInterrupt:
        print("interrupted: the current run was ended as KILLED; run again to resume", file=sys.stderr)
        return INTERRUPTED
    except UserError as error:
        print(f"error: {one_line(str(error))}", file=sys.stderr)
        return error.exit_code
    except FileNotFoundError as error:
        print(f"error: {one_line(str(error))}", file=sys.stderr)
        return UserError.exit_code
    except Exception as error:
        if not type(error).__module__.startswith("mlflow."):
            raise
        # the store refused or failed a request (auth, a server error, a locked or outdated database)
        print(f"error: the tracking store failed: {one_line(str(error))}", file=sys.stderr)
        return UserError.exit_code
    return 0


def one_line(message: str, limit: int = 2000) -> str:
    """An error message as one line of readable length, however long or multi-line the culprit was."""
    flat = " ".join(message.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


if __name__ == "__main__":
    sys.exit(main())
