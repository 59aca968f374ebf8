"""Run the report generation example's main job over several seeds and summarize the scores.

For each seed the script runs

    python -m came_grad.examples.rrg --optimizer all --seed SEED --out OUT/seed_SEED --no-progress

(linear scalarization, CAGrad and CAME-Grad in turn, with the example's
default settings), unless OUT/seed_SEED/results.json already contains
all three methods, and then reads every results.json. It prints BLEU-4,
ROUGE-L and CE-F1 as mean and standard deviation over the seeds, the
per-seed CE-F1 differences between CAME-Grad and linear scalarization, and
whether the mean CE-F1 gain of CAME-Grad over linear scalarization exceeds
the spread across seeds (the larger of the two methods' standard
deviations).

Usage:
  PYTHONPATH=. python benchmarks/rrg_quality.py --seeds 0 1 2 --out runs/rrg_quality
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import format_table, machine_line

OPTIMIZERS = ("ls", "cagrad", "came")
METRICS = (("bleu_4", "BLEU-4"), ("rouge_l", "ROUGE-L"), ("ce_f1", "CE-F1"))


def run_seed(seed: int, out: Path, quick: bool) -> dict | None:
    """Run the main job for one seed unless its results exist, and return its results or None."""
    folder = out / f"seed_{seed}"
    results_file = folder / "results.json"
    if results_file.exists():
        results = json.loads(results_file.read_text())
        if all(name in results for name in OPTIMIZERS):
            print(f"seed {seed}: reusing {results_file}")
            return results

    command = [
        sys.executable,
        "-m",
        "came_grad.examples.rrg",
        "--optimizer",
        "all",
        "--seed",
        str(seed),
        "--out",
        str(folder),
        "--no-progress",
    ]
    if quick:
        command.append("--quick")
    print(f"seed {seed}: running {' '.join(command)}", flush=True)
    start = time.perf_counter()
    completed = subprocess.run(command, check=False)
    print(f"seed {seed}: exit status {completed.returncode} after {time.perf_counter() - start:.0f} s", flush=True)
    if not results_file.exists():
        return None
    return json.loads(results_file.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds to run")
    parser.add_argument("--out", type=Path, default=Path("runs/rrg_quality"), help="output folder")
    parser.add_argument("--quick", action="store_true", help="pass --quick to the example (a smoke test, not the main job)")
    args = parser.parse_args()

    print(machine_line())
    per_seed = {}
    for seed in args.seeds:
        results = run_seed(seed, args.out, args.quick)
        if results is not None:
            per_seed[seed] = results

    rows = []
    for name in OPTIMIZERS:
        seeds = [seed for seed, results in per_seed.items() if name in results]
        row = [name, len(seeds)]
        for key, _ in METRICS:
            values = np.array([per_seed[seed][name][key] for seed in seeds], np.float64)
            row.append(f"{values.mean():.4f} ± {values.std():.4f}" if len(values) else "not run")
        rows.append(row)
    print(format_table(["optimizer", "seeds", *(title for _, title in METRICS)], rows))

    paired = [seed for seed, results in per_seed.items() if "ls" in results and "came" in results]
    if not paired:
        print("no seed has both ls and came results; nothing to compare")
        return
    came = np.array([per_seed[seed]["came"]["ce_f1"] for seed in paired])
    ls = np.array([per_seed[seed]["ls"]["ce_f1"] for seed in paired])
    differences = came - ls
    spread = max(came.std(), ls.std())
    print("CE-F1, CAME-Grad minus linear scalarization, per seed: " + ", ".join(f"seed {s}: {d:+.4f}" for s, d in zip(paired, differences)))
    print(
        f"mean gain {differences.mean():+.4f}; spread across seeds (larger std of the two) {spread:.4f}; "
        f"gain exceeds spread: {'yes' if differences.mean() > spread else 'no'} ({len(paired)} seeds)"
    )


if __name__ == "__main__":
    main()
