"""`python -m trainers RUN_DIR`: the job side of a run.

Loads the run's resolved spec, builds the trainer named by `trainer:` with the framework services,
trains, and exits 0 when training completed (budget or early stopping), 75 (`EXIT_REQUEUE`) after a
preemption/time-limit signal was handled by a checkpoint, 1 on any error, with the traceback on
stderr (the job wrapper saves it as logs/stderr-N.log, which failure diagnosis reads).
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainers", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", default=os.environ.get("ORCH_RUN_DIR"),
                        help="the run folder (default: $ORCH_RUN_DIR)")
    args = parser.parse_args(argv)
    if not args.run_dir:
        parser.error("give RUN_DIR (or set ORCH_RUN_DIR)")
    run_dir = Path(args.run_dir)
    if not (run_dir / "spec.yaml").is_file():
        print(f"error: {run_dir} has no spec.yaml: not a run folder", file=sys.stderr)
        return 2
    try:
        from orchestrator.spec.schema import spec_from_run
        from trainers import resolve_trainer
        from trainers.framework.base import TrainerContext

        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Writing model shards" bars in logs/stderr-N.log
        spec = spec_from_run(run_dir / "spec.yaml")
        cls = resolve_trainer(spec.trainer)
        ctx = TrainerContext(run_dir, spec)
        outcome = cls(ctx).fit()
        code = outcome.exit_code
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - everything a job can die of ends here, with its traceback
        traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()
        return 1
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
