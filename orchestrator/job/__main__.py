"""`python -m orchestrator.job RUN_DIR [--backend B] [-- COMMAND...]`: the job wrapper."""
import sys

from orchestrator.job.wrapper import main

sys.exit(main())
