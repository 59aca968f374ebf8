"""Command line entry point of the report generation example (``came-grad-rrg``).

Trains the reference model once per multi-task optimizer with the same seed,
data and batch order, prints a table of BLEU-1..4, ROUGE-L, clinical efficacy
and training time, and writes ``results.json`` to the output folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from came_grad.examples.rrg.optimizers import AGGREGATORS, PAPER_COMPARISON

logger = logging.getLogger("came_grad.examples.rrg")

# Run sizes. The default run learns to report common findings from the
# rendered radiographs; --quick only checks that everything runs end to end.
PRESETS = {
    "default": {"image_size": 32, "steps": 500, "batch_size": 32, "eval_size": 300},
    "quick": {"image_size": 32, "steps": 60, "batch_size": 16, "eval_size": 64},
}

TABLE_COLUMNS = (
    ("bleu_1", "BLEU-1"),
    ("bleu_2", "BLEU-2"),
    ("bleu_3", "BLEU-3"),
    ("bleu_4", "BLEU-4"),
    ("rouge_l", "ROUGE-L"),
    ("ce_precision", "CE-P"),
    ("ce_recall", "CE-R"),
    ("ce_f1", "CE-F1"),
    ("train_seconds", "train s"),
)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of ``came-grad-rrg``."""
    parser = argparse.ArgumentParser(
        prog="came-grad-rrg",
        description=(
            "Train a small report generation model on IU X-Ray reports with two tasks "
            "(report generation and 14-observation classification, loss weights 1 and 4) "
            "and compare multi-task gradient methods on BLEU, ROUGE-L and clinical efficacy."
        ),
    )
    parser.add_argument(
        "--optimizer",
        choices=[*AGGREGATORS, "all", "family"],
        default="all",
        help="multi-task gradient method: ls (linear scalarization), cagrad, came (CAME-Grad), one of "
        "the other methods, 'all' for ls, cagrad and came in turn, or 'family' for every method, "
        "each with the same seed and data (default: all)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"small smoke-test run: {PRESETS['quick']['steps']} steps, "
        f"{PRESETS['quick']['image_size']}-pixel images, {PRESETS['quick']['eval_size']} evaluation reports",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the data split, initialization, batch order and dropout (default: 0)")
    parser.add_argument("--out", type=Path, default=Path("runs/rrg"), help="output folder for results.json and side files (default: runs/rrg)")
    parser.add_argument(
        "--data",
        choices=("rendered", "r2gen"),
        default="rendered",
        help="rendered: IU X-Ray report text with a rendered radiograph per report, downloaded and cached "
        "on first use; r2gen: your own IU X-Ray images in the R2Gen layout, see --annotation and --image-dir "
        "(default: rendered)",
    )
    parser.add_argument("--annotation", type=Path, help="R2Gen annotation.json with train, val and test records (with --data r2gen)")
    parser.add_argument("--image-dir", type=Path, help="folder that the image_path entries of --annotation are relative to (with --data r2gen)")
    parser.add_argument("--cache-dir", type=Path, help="download and cache folder of the rendered data (default: $CAME_GRAD_CACHE or ~/.cache/came_grad)")
    parser.add_argument("--limit", type=int, help="use only the first LIMIT reports of the rendered data, before the split")
    parser.add_argument("--steps", type=int, help="optimizer steps per method (default: 500, --quick: 60)")
    parser.add_argument("--batch-size", type=int, help="training reports per step (default: 32, --quick: 16)")
    parser.add_argument("--image-size", type=int, help="image height and width in pixels, a multiple of 8 (default: 32)")
    parser.add_argument("--eval-size", type=int, help="number of test reports to evaluate on, the first ones of the split (default: 300, --quick: 64)")
    parser.add_argument("--learning-rate", type=float, default=3e-3, help="peak AdamW learning rate after warm-up (default: 3e-3)")
    parser.add_argument("--encoder", choices=("cnn", "vit"), default="cnn", help="image encoder: small CNN or tiny ViT (default: cnn)")
    parser.add_argument("--no-progress", action="store_true", help="hide the per-step progress bar")
    return parser


def _resolve_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Merge the preset with explicit options and check the values."""
    settings = dict(PRESETS["quick" if args.quick else "default"])
    for name in ("image_size", "steps", "batch_size", "eval_size"):
        value = getattr(args, name)
        if value is not None:
            settings[name] = value

    for name in ("steps", "batch_size", "eval_size", "limit"):
        value = settings.get(name) if name != "limit" else args.limit
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    if not args.learning_rate > 0:
        raise ValueError(f"--learning-rate must be a number > 0, got {args.learning_rate}")
    if settings["image_size"] < 8 or settings["image_size"] % 8:
        raise ValueError(f"--image-size must be a positive multiple of 8, got {settings['image_size']}")
    if args.data == "r2gen" and (args.annotation is None or args.image_dir is None):
        raise ValueError("--data r2gen needs --annotation and --image-dir; pass both paths")
    if args.data == "rendered" and (args.annotation is not None or args.image_dir is not None):
        raise ValueError("--annotation and --image-dir apply only with --data r2gen; add --data r2gen")
    return settings


def load_splits(args: argparse.Namespace, image_size: int) -> dict[str, Any]:
    """Load the train, val and test splits chosen by ``--data``."""
    if args.data == "r2gen":
        from came_grad.examples.rrg.iu_xray import load_r2gen

        return load_r2gen(args.annotation, args.image_dir, image_size)

    from came_grad.examples.rrg.dataset import load_embedded_iu_xray

    return load_embedded_iu_xray(image_size=image_size, seed=args.seed, cache_dir=args.cache_dir, limit=args.limit)


def write_labeler_agreement(args: argparse.Namespace, out_dir: Path) -> None:
    """Log and save the labeler's agreement with the reports' MeSH tags (rendered data only)."""
    from came_grad.examples.rrg.iu_xray import load_iu_xray_reports
    from came_grad.examples.rrg.labeler import format_agreement, mesh_agreement

    reports = load_iu_xray_reports(cache_dir=args.cache_dir)
    if args.limit is not None:
        reports = reports[: args.limit]
    rows = mesh_agreement(reports)
    logger.info("rule-based labeler against the MeSH tags of %d reports:\n%s", len(reports), format_agreement(rows))
    records = [dataclasses.asdict(row) for row in rows]
    (out_dir / "labeler_agreement.json").write_text(json.dumps(records, indent=2, default=_to_json) + "\n")


def _to_json(value: Any) -> Any:
    """Convert numpy scalars and arrays for json.dumps."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def format_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    """Format result rows as a fixed-width text table; missing values show as ``-``."""
    name_width = max(len(name) for name in rows) if rows else 9
    name_width = max(name_width, len("optimizer"))
    header = "optimizer".ljust(name_width) + "".join(f"{title:>9}" for _, title in TABLE_COLUMNS)
    lines = [header, "-" * len(header)]
    for name, row in rows.items():
        cells = []
        for key, _ in TABLE_COLUMNS:
            value = row.get(key)
            if value is None:
                cells.append(f"{'-':>9}")
            elif key == "train_seconds":
                cells.append(f"{value:>9.1f}")
            else:
                cells.append(f"{value:>9.3f}")
        lines.append(name.ljust(name_width) + "".join(cells))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison and return the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # INFO for this example's modules only, so JAX's own INFO messages stay hidden.
    logging.basicConfig(format="%(message)s")
    logger.setLevel(logging.INFO)

    from came_grad.examples.rrg import train

    # Invalid option values and data paths end with a usage message, not a traceback.
    try:
        settings = _resolve_settings(args)
        config = train.TrainConfig(
            steps=settings["steps"],
            batch_size=settings["batch_size"],
            warmup_steps=min(100, settings["steps"] // 10),
            learning_rate=args.learning_rate,
            seed=args.seed,
            encoder=args.encoder,
            eval_size=settings["eval_size"],
        )
        splits = load_splits(args, settings["image_size"])
    except ValueError as error:
        parser.error(str(error))

    if args.optimizer == "all":
        optimizers = list(PAPER_COMPARISON)
    elif args.optimizer == "family":
        optimizers = list(AGGREGATORS)
    else:
        optimizers = [args.optimizer]
    args.out.mkdir(parents=True, exist_ok=True)

    logger.info(
        "data: %s; train %d, val %d, test %d reports; images %s",
        args.data,
        *(len(splits[name].reports) for name in ("train", "val", "test")),
        "x".join(map(str, splits["train"].images.shape[1:3])),
    )
    if args.data == "rendered":
        write_labeler_agreement(args, args.out)

    data = train.prepare_data(splits, config)
    logger.info("vocabulary: %d tokens; evaluating on %d %s reports", data.tokenizer.vocab_size, len(data.eval_reports), config.eval_split)

    baselines = train.baseline_scores(splits, data)
    (args.out / "baselines.json").write_text(json.dumps(baselines, indent=2) + "\n")

    results = {}
    for name in optimizers:
        logger.info("training with %s (%s)", name, AGGREGATORS[name].title)
        results[name] = train.train_and_evaluate(name, data, config, progress=not args.no_progress)
        # Written after every method, so a long run that stops early keeps its finished rows.
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    run_config = {"data": args.data, "image_size": settings["image_size"], "optimizers": optimizers, **dataclasses.asdict(config)}
    (args.out / "run_config.json").write_text(json.dumps(run_config, indent=2, default=_to_json) + "\n")

    print()
    print(format_table({**results, "(most common report)": baselines["most_common_report"], "(majority labels)": baselines["majority_labels"]}))
    if args.quick:
        print("--quick trains for a few steps to check that the pipeline runs; its scores do not rank the methods.")
    print(f"\nwrote {args.out / 'results.json'}")

    non_finite = [name for name, row in results.items() if not all(math.isfinite(row[key]) for key, _ in TABLE_COLUMNS)]
    if non_finite:
        logger.error("non-finite metrics for %s", ", ".join(non_finite))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
