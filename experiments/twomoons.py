"""TwoMoons ablation of MPL: which part of the teacher's training moves the student.

    python -m experiments.twomoons --seeds 0 1 2 3 4

Variants (selftrain.moons.MoonsSetup): full MPL (MPL signal + UDA), UDA only (no MPL
signal), the MPL signal with its sign flipped, and both signs without UDA; supervised and plain
pseudo-labels for reference. Prints test accuracy mean ± std over seeds.
"""

from __future__ import annotations

import argparse
import statistics

from selftrain import moons

VARIANTS = {
    "MPL + UDA (default)": {},
    "UDA only (mpl_weight 0)": {"mpl_weight": 0.0},
    "MPL sign flipped + UDA": {"mpl_weight": -1.0},
    "MPL without UDA": {"uda_weight": 0.0},
    "MPL sign flipped, no UDA": {"mpl_weight": -1.0, "uda_weight": 0.0},
    # how h is measured: this MLP has no dropout or BatchNorm, so eval-mode h is train-mode h exactly;
    # the first-order form is the one that differs
    "MPL + UDA, h first-order (signal dot)": {"signal": "dot"},
    "MPL without UDA, h first-order (signal dot)": {"uda_weight": 0.0, "signal": "dot"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = ap.parse_args()
    rows = {}
    for name, change in VARIANTS.items():
        results = [moons.run(seed, moons.MoonsSetup(**change)) for seed in args.seeds]
        if not rows:
            rows["supervised"] = [r.accuracy["supervised"] for r in results]
            rows["pseudo-labels"] = [r.accuracy["pseudo_labels"] for r in results]
        rows[name] = [r.accuracy["mpl"] for r in results]
        print(f"{name}: done", flush=True)
    print("| method | test accuracy (mean ± std) | per seed |\n|---|---:|---|")
    for name, accs in rows.items():
        print(
            f"| {name} | {100 * statistics.mean(accs):.1f} ± {100 * statistics.stdev(accs):.1f} % | "
            f"{', '.join(f'{100 * a:.1f}' for a in accs)} |"
        )


if __name__ == "__main__":
    main()
