"""`drivedistill eval ...`: routes to the evaluator that owns each mode.

drivedistill eval openloop   --pred PRED.npz --gt GT.npz --json OUT.json     (ST-P3 + UniAD; GT dense or packed)
drivedistill eval pdms       --scenes DIR --plans PLANS.npz [--protocol navsim-v2]  (PDMS v1.1 default; v2 EPDMS)
drivedistill eval closedloop --checkpoint CKPT | --planner NAME             (default world)
drivedistill eval --checkpoint CKPT --data STORE                            (everything, one model)
"""

from __future__ import annotations

import importlib

MODES: dict[str, str] = {
    "openloop": "drivedistill.metrics.openloop_cli",
    "pdms": "drivedistill.metrics.pdms_cli",
    "closedloop": "drivedistill.metrics.closedloop",
}


def main(argv: list[str]) -> int:
    if argv and argv[0] in MODES:
        return int(importlib.import_module(MODES[argv[0]]).main(argv[1:]) or 0)
    if not argv or (argv[0] in {"-h", "--help"} and len(argv) == 1):
        print(__doc__)
        return 0
    # `eval --checkpoint CKPT --data STORE`: all metrics for one trained model
    return int(importlib.import_module("drivedistill.train.evaluate").main(argv) or 0)
