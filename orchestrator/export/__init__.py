"""`orch export`: runs into the tools researchers already use (TensorBoard event files, MLflow).

Both exporters read a run as one logical run across requeued attempts (`orchestrator.report.collect`),
and both are incremental: a second export adds only what is new.
"""
