"""`orch submit SPEC... [--set k=v]... [--backend B] [--dry-run] [--wait] [--json]`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from orchestrator.errors import OrchError
from orchestrator.record.tree import ResultsRoot
from orchestrator.spec.schema import spec_to_yaml
from orchestrator.lifecycle.submit import plan, submit_plan
from orchestrator.commands.progress import wait_for_runs


SHOW_AT_MOST = 5  # a dry run of a 1,000-point sweep shows a few runs in full, then a count


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("specs", nargs="+", type=Path, metavar="SPEC", help="experiment spec YAML file(s); later ones may depend on earlier ones with after:")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec value, YAML-typed (e.g. --set train.lr=3e-4); repeatable")
    p.add_argument("--backend", choices=["local", "slurm"], help="override the spec's backend")
    p.add_argument("--dry-run", action="store_true", help="print resolved specs and job scripts; submit nothing")
    p.add_argument("--wait", action="store_true", help="block until every run ends, showing each run's step, loss, tok/s "
                   "and ETA (redrawn on a terminal; one line per change in a pipe); exit 0 only if all COMPLETED")
    p.add_argument("--json", action="store_true", help="print the submitted runs as JSON")


def run(args: argparse.Namespace) -> int:
    root = ResultsRoot(args.results)
    argv = sys.argv[1:]
    groups = plan(args.specs, root, args.overrides, args.backend, dry_run=args.dry_run, argv=argv)
    total = sum(len(g.group.items) for g in groups)
    if args.dry_run:
        from orchestrator.backends import get_backend

        rows = _asset_rows(groups)
        out = []
        for g in groups:
            backend = get_backend(g.backend)
            for item in g.group.items:
                script = backend.render(item, g.group)
                out.append({"run_id": item.run.run_id, "backend": g.backend, "spec": item.spec.model_dump(mode="json"),
                            "script": script, "assets": [rows[a.identity] for a in item.spec.assets()]})
        if args.json:
            print(json.dumps(out, indent=2))
            return 0
        for g in groups:
            n = len(g.group.items)
            kind = f"a sweep of {n} runs" if g.group.items[0].run.record.get("sweep_id") else "1 run"
            print(f"# {g.source}: {kind} on the {g.backend} backend" +
                  (f", at most {g.group.max_parallel} at a time" if g.group.max_parallel else ""))
        if rows:
            print("# hub assets (jobs run offline against this cache: `orch prefetch` fetches what is missing)")
            for a in rows.values():
                print(f"#   {a['state']:<7} {a['label']}  [{a['key']}]")
        shown = 0
        for entry, item in zip(out, (i for g in groups for i in g.group.items)):
            if shown == SHOW_AT_MOST:
                print(f"\n# ... and {total - shown} more run(s) like these (`--json` prints every one)")
                break
            shown += 1
            print(f"\n# ---- {entry['run_id']} (resolved spec)")
            sys.stdout.write(spec_to_yaml(item.spec))
            print(f"# ---- {entry['run_id']} (job script)")
            sys.stdout.write(entry["script"])
        for g in groups:  # what is submitted for a sweep as a whole: a SLURM job array's dispatcher
            for k, script in enumerate(get_backend(g.backend).render_group(g.group)):
                print(f"\n# ---- {g.source}: array {k} of the sweep (the script sbatch receives; "
                      "task i runs the i-th run's job script)")
                sys.stdout.write(script)
        print(f"\ndry run: {total} run(s) would be submitted; nothing was submitted.")
        return 0
    try:
        submitted = submit_plan(groups)
    finally:
        pass
    rows = [{"run_id": item.run.run_id, "name": item.spec.name, "run_dir": str(item.run.paths.root),
             "backend": item.spec.backend, "job_id": job_id} for item, job_id in submitted]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"submitted {r['run_id']}  ({r['backend']} job {r['job_id']})  {r['run_dir']}")
    if args.wait:
        return wait_for_runs([item.run for item, _ in submitted], root.root, quiet=args.json)
    return 0


def _asset_rows(groups: list) -> dict[tuple, dict]:
    """Each hub asset of the submission once (by identity), with whether this side's cache holds it
    (asked of the cache alone, no network)."""
    from orchestrator.hub.cache import hf_home, is_cached
    from orchestrator.lifecycle.submit import assets_of

    assets = assets_of([item.spec for g in groups for item in g.group.items])
    return {a.identity: {"kind": a.kind, "repo_id": a.repo_id, "config": a.config, "split": a.split,
                         "revision": a.revision, "key": a.key, "label": a.label, "cache": hf_home(),
                         "state": "cached" if is_cached(a) else "missing"} for a in assets}


__all__ = ["add_arguments", "run", "OrchError"]
