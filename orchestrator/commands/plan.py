"""`orch plan SPEC... [--set k=v]... [--probe N] [--backend B] [--device-mem M] [--compute FLOPS] [--json]`.

Before the queue: for one run or every sweep point, the arithmetic (parameters, tokens, tokens per
parameter against Chinchilla's 20, FLOPs), the memory of one process against its device, and with
`--probe N` the wall time of the whole budget measured from N real steps, the requeues
`resources.time` implies, GPU-hours, a 1x/5x/10x/50x table and warnings. The logic is in
orchestrator/plan/; the model's sizes come from the trainer's config section (`Spec.model_shape`).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Optional

from orchestrator.commands.common import fmt_age
from orchestrator.errors import UserError

DEFAULT_GPU_MEM = "80G"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("specs", nargs="+", type=Path, metavar="SPEC", help="experiment spec YAML file(s)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec value, as for `orch submit`; repeatable")
    p.add_argument("--probe", type=int, metavar="N", help="run N real steps of each run and project its wall time")
    p.add_argument("--backend", choices=["local", "slurm"], default="local",
                   help="where the probe runs (default: local, on this machine)")
    p.add_argument("--device-mem", metavar="MEM", help="memory of one GPU, e.g. 80G (default: the cluster "
                   f"profile's gpu_mem, else {DEFAULT_GPU_MEM}); CPU runs are held against resources.mem")
    p.add_argument("--compute", type=float, metavar="FLOPS", help="also print the Chinchilla-optimal "
                   "(parameters, tokens) for this compute budget, e.g. 1e20")
    p.add_argument("--eval-fraction", type=float, default=None, metavar="F",
                   help="warn when evaluation costs more than this share of training (default 0.25)")
    p.add_argument("--keep-probe", action="store_true", help="keep the probe's run folder under RESULTS/.probes/")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")


def _bytes(mem: str) -> float:
    from orchestrator.spec.sections import parse_mem

    return parse_mem(mem) * 2**20


def _device(spec: Any, args: argparse.Namespace, profile: Any) -> tuple[str, float, bool]:
    """(what, bytes, is a GPU) one process trains on."""
    if spec.resources.gpus_per_node and spec.train.device != "cpu":
        mem = args.device_mem or profile.gpu_mem or DEFAULT_GPU_MEM
        return f"GPU of {mem}", _bytes(mem), True
    share = _bytes(str(spec.resources.mem)) / spec.resources.processes_per_node
    return f"host memory (resources.mem {spec.resources.mem})", share, False


def plan_one(spec: Any, point: Optional[dict], args: argparse.Namespace, profile: Any) -> dict[str, Any]:
    from orchestrator.plan import memory, projection
    from orchestrator.plan.arithmetic import arithmetic, processes

    shape = spec.model_shape()
    arith = arithmetic(spec, shape)
    row: dict[str, Any] = {"name": spec.name, "point": point, "trainer": spec.trainer, "processes": processes(spec),
                           "arithmetic": arith.as_dict(), "notes": list(shape.notes) if shape else [],
                           "memory": None, "probe": None, "projection": None, "table": [], "warnings": []}
    if shape is None:
        row["notes"].append(f"trainer {spec.trainer} gives no model shape (or its vocabulary/config is not "
                            "readable without loading data): no parameter, FLOP or memory arithmetic")
    else:
        what, device_bytes, gpu = _device(spec, args, profile)
        est = memory.estimate(shape, spec.train.batch_size, spec.train.precision, dropout=shape.dropout > 0,
                              fused_attention=gpu)
        best = est.max_batch(device_bytes)
        row["memory"] = {**est.as_dict(), "device": what, "device_bytes": device_bytes, "fits": est.total <= device_bytes * memory.HEADROOM,
                         "max_batch": best, "keep_global_batch": memory.keep_global_batch(spec.train.batch_size,
                                                                                          spec.train.grad_accum, best)}
        if not row["memory"]["fits"]:
            advice = row["memory"]["keep_global_batch"]
            row["warnings"].append(
                f"batch {spec.train.batch_size} needs ~{est.total / 1e9:.1f} GB, more than {memory.HEADROOM:.0%} of the "
                f"{what}: " + (f"train.batch_size={advice[0]} train.grad_accum={advice[1]} keeps the global batch"
                               if advice else "not even one sample fits"))
    if args.probe:
        from orchestrator.plan.probe import run_probe

        probe = run_probe(spec, args.probe, args.results, args.backend, keep=args.keep_probe)
        devices = spec.resources.nodes * spec.resources.gpus_per_node
        row["probe"] = dict(probe.__dict__)
        try:
            proj = projection.project(spec, arith.steps, probe, devices)
        except ValueError as exc:  # epochs alone: the plan does not know the data's size
            row["warnings"].append(f"no projection: {exc}")
            return row
        row["projection"] = {**proj.__dict__, "requeues": proj.requeues}
        for k in projection.MULTIPLES:
            p = projection.project(spec, proj.steps * k, probe, devices)
            tokens = p.steps * arith.tokens_per_step if arith.tokens_per_step else None
            row["table"].append({"multiple": k, "steps": p.steps, "tokens": tokens,
                                 "tokens_per_param": tokens / shape.params if tokens and shape else None,
                                 "wall_seconds": p.total_seconds, "attempts": p.attempts,
                                 "device_hours": p.device_hours})
        limit = args.eval_fraction if args.eval_fraction is not None else projection.EVAL_FRACTION_WARN
        row["warnings"] += projection.warnings(spec, proj, limit)
        if devices and probe.peak_memory_kind != "gpu":
            row["warnings"].append(f"the spec asks for {devices} GPU(s) but the probe ran without one: its times are "
                                   "this machine's (probe on the cluster with --backend slurm)")
    return row


def _n(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:,.0f}" if abs(v) < 1e7 else f"{v:.3g}"


def _wall(seconds: float) -> str:
    return "never" if math.isinf(seconds) else fmt_age(round(seconds))


def _render(rows: list[dict[str, Any]], source: str) -> None:
    print(f"# {source}: {len(rows)} run(s)")
    for row in rows:
        a, mem = row["arithmetic"], row["memory"]
        label = row["name"] + (" " + " ".join(f"{k}={v}" for k, v in row["point"].items()) if row["point"] else "")
        print(f"\n{label}  (trainer {row['trainer']}, {row['processes']} process(es))")
        if a["params"]:
            print(f"  parameters    {a['params']:,} total, {a['non_embedding']:,} non-embedding"
                  + (f", {a['trainable']:,} trained" if a["trainable"] != a["params"] else ""))
        if a["tokens"]:
            print(f"  budget        {a['steps']:,} steps x {a['tokens_per_step']:,} tokens = {a['tokens']:,} tokens")
        elif a["steps"] is None:
            print("  budget        train.epochs or train.max_time: the steps follow from the data's size or the probe's pace")
        if a["tokens_per_param"] is not None:
            print(f"  tokens/param  {a['tokens_per_param']:.1f} ({a['tokens_per_non_embedding_param']:.1f} per non-embedding"
                  f" parameter); Chinchilla's 20: {a['verdict']}")
            print(f"  FLOPs         {a['flops_per_token']:.3g} per token, {a['flops']:.3g} in all; compute-optimal for "
                  f"that: {_n(a['optimal_params'])} parameters on {_n(a['optimal_tokens'])} tokens")
        if mem:
            print(f"  memory        {mem['total'] / 1e9:.2f} GB per process at batch {mem['batch_size']} (weights "
                  f"{mem['weights'] / 1e9:.2f}, gradients {mem['gradients'] / 1e9:.2f}, optimizer {mem['optimizer'] / 1e9:.2f},"
                  f" activations {mem['activations'] / 1e9:.2f}) of a {mem['device']}: "
                  f"{'fits' if mem['fits'] else 'DOES NOT FIT'}; largest batch {mem['max_batch']:,}")
        pr, pj = row["probe"], row["projection"]
        if pr:
            peak = (f", peak {pr['peak_memory_bytes'] / 1e9:.2f} GB ({pr['peak_memory_kind']})"
                    if pr["peak_memory_bytes"] else "")
            tps = f", {pr['tokens_per_sec']:,.0f} tokens/s" if pr["tokens_per_sec"] else ""
            print(f"  probe         {pr['steps']} steps on {pr['host']}: {pr['step_time'] * 1e3:.1f} ms/step{tps}, "
                  f"evaluation {pr['eval_seconds']:.2f} s, checkpoint {pr['checkpoint_seconds']:.2f} s, "
                  f"start-up and end {pr['overhead_seconds']:.1f} s{peak}")
        if pj:
            gpu_h = f", {pj['device_hours']:.2f} GPU-hours" if pj["device_hours"] is not None else ""
            print(f"  projected     {_wall(pj['total_seconds'])} wall ({pj['total_seconds']:.0f} s: steps "
                  f"{pj['train_seconds']:.0f} s, evaluation {pj['eval_seconds']:.0f} s, checkpoints "
                  f"{pj['checkpoint_seconds']:.0f} s), "
                  + (f"{pj['attempts']} attempt(s) of resources.time{gpu_h}" if pj["attempts"] < 10**9 else
                     "no attempt fits in resources.time"))
            print("  budget x   steps        tokens          tokens/param  wall        attempts  GPU-hours")
            for t in row["table"]:
                tpp = f"{t['tokens_per_param']:.1f}" if t["tokens_per_param"] is not None else "-"
                gh = f"{t['device_hours']:.2f}" if t["device_hours"] is not None else "-"
                print(f"  {t['multiple']:>3}x     {t['steps']:>11,}  {_n(t['tokens']):>14}  {tpp:>12}  "
                      f"{_wall(t['wall_seconds']):>10}  {t['attempts'] if t['attempts'] < 10**9 else 'never':>8}  {gh:>9}")
        for note in row["notes"]:
            print(f"  note: {note}")
        for warning in row["warnings"]:
            print(f"  WARNING: {warning}")


def _sweep_summary(rows: list[dict[str, Any]]) -> Optional[str]:
    scored = [(abs(math.log(r["arithmetic"]["tokens_per_param"] / 20.0)), r) for r in rows
              if r["arithmetic"]["tokens_per_param"]]
    if len(rows) < 2 or not scored:
        return None
    optimal = [r for r in rows if r["arithmetic"]["verdict"] == "about compute-optimal"]
    closest = min(scored, key=lambda x: x[0])[1]
    label = lambda r: " ".join(f"{k}={v}" for k, v in (r["point"] or {}).items()) or r["name"]  # noqa: E731
    return ("compute-optimal for their budget (within 0.8x-1.25x of 20 tokens/param): "
            + (", ".join(label(r) for r in optimal) if optimal else "none")
            + f"; closest: {label(closest)} ({closest['arithmetic']['tokens_per_param']:.1f} tokens/param)")


def run(args: argparse.Namespace) -> int:
    from orchestrator.hub import cache as hub
    from orchestrator.lifecycle.submit import assets_of, prefetch_command, resolve_specs
    from orchestrator.plan.arithmetic import chinchilla_optimal
    from orchestrator.spec.profile import load_profile

    if args.probe is not None and args.probe < 2:
        raise UserError("--probe needs at least 2 steps", hint="e.g. --probe 50")
    profile = load_profile()
    out = []
    prepared = resolve_specs(args.specs, args.overrides, None)
    if args.probe:  # a probe is a job: its hub assets must be in the cache, as at submit
        hub.ensure(assets_of([s for _, _, specs in prepared for s in specs], offline_only=True),
                   prefetch_command(args.specs, args.overrides))
    for file, resolved, specs in prepared:
        rows = [plan_one(spec, r.sweep_point or None, args, profile) for r, spec in zip(resolved, specs)]
        summary = _sweep_summary(rows)
        out.append({"spec_file": str(file), "runs": rows, "sweep": summary})
        if not args.json:
            _render(rows, str(file))
            if summary:
                print(f"\n# sweep: {summary}")
    optimum = chinchilla_optimal(args.compute) if args.compute else None
    if args.json:
        print(json.dumps({"specs": out, "compute": args.compute,
                          "chinchilla_optimal": {"params": optimum[0], "tokens": optimum[1]} if optimum else None},
                         indent=2, default=str))
    elif optimum:
        print(f"\n# {args.compute:.3g} FLOPs are spent compute-optimally (Chinchilla, C = 6 N D, D = 20 N) on "
              f"{optimum[0]:,} parameters and {optimum[1]:,} tokens")
    return 0
