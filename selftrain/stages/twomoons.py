"""twomoons: the TwoMoons picture of MPL."""

from __future__ import annotations

from typing import Any

from selftrain.params import Params


def run(params: Params, *, out: str) -> dict[str, Any]:
    """The TwoMoons picture of MPL: supervised vs plain pseudo-labels vs MPL from 6 labeled points.

    One draw of the moons per params twomoons.seeds; writes twomoons.png (the first seed's decision
    boundaries and accuracies) and results.json (accuracy per seed, mean, std)."""
    from selftrain import moons  # torch: here, so that the CLI starts without it

    result = moons.write(out, params.twomoons.seeds, moons.MoonsSetup(steps=params.twomoons.steps))
    return {name: {k: result[name][k] for k in ("mean", "std")} for name in moons.METHODS}
