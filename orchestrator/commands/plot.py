"""`orch plot RUN [--out FILE.png]`: the training curves of one run or bundle, and its
length-generalization figure when the run evaluated several lengths (`eval.length_multiples`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from orchestrator.record.atomicio import atomic_write_bytes
from orchestrator.errors import UserError
from orchestrator.analysis.rundata import open_source


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("ref", metavar="RUN", help="a run id, prefix, run folder or bundle folder")
    p.add_argument("--out", metavar="FILE.png", help="where to write the training curves (default: "
                   "./<run_id>_curves.png); the length-generalization figure goes beside it as "
                   "<FILE>_length_generalization.png")


def run(args: argparse.Namespace) -> int:
    d = open_source(args.ref, args.results)
    out = Path(args.out or f"{d.run_id}_curves.png")
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out}: the file name must end in .png")
    from orchestrator.analysis.plotting import length_generalization, training_curves

    png = training_curves(d)
    if png is None:
        raise UserError(f"{d.run_id} has logged no curves yet (eval/metrics_history.jsonl and "
                        "logs/train_diagnostics.jsonl are empty or missing)")
    atomic_write_bytes(out, png)
    print(f"wrote {out}")
    lengths = length_generalization(d, "last")
    if lengths is not None:
        side = out.with_name(f"{out.stem}_length_generalization.png")
        atomic_write_bytes(side, lengths)
        print(f"wrote {side}")
    return 0
