"""The SLURM backend: sbatch job scripts, job arrays for sweeps, batched status, scancel.

Submission: one run -> one `sbatch --parsable`; a sweep -> one job array per MaxArraySize
chunk, throttled with `%max_parallel` (chunks chained with afterany so the throttle holds
across them). Each run's attempt and job id are recorded as soon as its sbatch returns, so a
failure part way leaves every submitted run on record (and the rest marked FAILED with the
reason) before the error is raised.

Status: one `squeue` (plus one `sacct` when accounting exists and squeue no longer knows a
job) per refresh, through a cache file shared by all orch processes of the user, so no
more than one query per `query_interval` reaches slurmctld however many `orch status`
loops run. A query that fails is cached as well (callers get StaleAnswer, exit code 3, with the
last answers at once instead of each waiting for squeue to time out). Without accounting, an
ended job's exit code comes from `scontrol show job`, and an ended job's last answer outlives
its record in slurmctld. The run folder's own markers (written by the job wrapper) cover the rest.

Requeue is the job side's (`slurm/job.py`): `scontrol requeue` puts the same job id (array task
`<job>_<task>`) back in the queue and the next start is a new attempt in run.json.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TypeVar

from orchestrator.record.atomicio import atomic_write_text
from orchestrator.record import record
from orchestrator.spec.profile import ClusterProfile, load_profile
from orchestrator.errors import BackendUnavailable, OrchError
from orchestrator.record.tree import Run
from orchestrator.record.states import State
from orchestrator.backends.base import Backend, JobStatus, StaleAnswer, SubmitGroup, SubmitItem
from orchestrator.backends.slurm.cli import SharedCache, SlurmCLI, SlurmCommandError, prune_jobs
from orchestrator.backends.slurm.parse import (
    SACCT_FORMAT, SQUEUE_FORMAT, ClusterConfig, base_job_id, merge_statuses, parse_sacct, parse_squeue,
    show_job_status,
)
from orchestrator.backends.slurm.render import render_array, render_job

T = TypeVar("T")
R = TypeVar("R")
CONFIG_TTL = 600.0  # seconds a cached `scontrol show config` stays valid
JOB_CACHE_KEEP = 3600.0  # seconds cached job answers are kept in the shared file
# One bounded wait for a scheduler query: squeue against a stopped slurmctld gives up by itself after
# about 18 s (MessageTimeout and retries); an overloaded one may never answer.
QUERY_TIMEOUT = float(os.environ.get("ORCH_SLURM_QUERY_TIMEOUT", "30"))
ACCOUNTING_RETRY = 60.0  # seconds a sacct that failed (slurmdbd down) is not asked again
MAX_SHOW_JOB = 20  # `scontrol show job` calls per poll for exit codes when there is no accounting


class SlurmBackend(Backend):
    name = "slurm"

    def __init__(self, profile: Optional[ClusterProfile] = None, cli: Optional[SlurmCLI] = None) -> None:
        self.profile = profile if profile is not None else load_profile()
        self.cli = cli or SlurmCLI()
        self.cache = SharedCache(Path(self.profile.cache_dir) if self.profile.cache_dir else None)
        self._config: Optional[ClusterConfig] = None

    # -- cluster facts ----------------------------------------------------------------------
    def config(self) -> ClusterConfig:
        """MaxArraySize and accounting, from `scontrol show config`, cached for CONFIG_TTL and
        invalidated when the local slurm.conf changes."""
        if self._config is None:
            with self.cache.locked() as data:
                self._config_from(data)
        assert self._config is not None
        return self._config

    def _config_from(self, data: dict[str, Any]) -> ClusterConfig:
        """config() inside a section that already holds the shared cache's lock."""
        if self._config is not None:
            return self._config
        conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf"))
        try:
            mtime = conf.stat().st_mtime
        except OSError:
            mtime = 0.0
        cached = data.get("config") or {}
        if cached and time.time() - cached.get("at", 0) < CONFIG_TTL and cached.get("mtime") == mtime:
            cfg = ClusterConfig(**cached["values"])
        else:
            out = self.cli.run(["scontrol", "show", "config"], timeout=QUERY_TIMEOUT).stdout
            cfg = ClusterConfig.from_show_config(out)
            data["config"] = {"at": time.time(), "mtime": mtime, "values": cfg.__dict__}
        if self.profile.max_array_size:
            cfg = ClusterConfig(**{**cfg.__dict__, "max_array_size": self.profile.max_array_size})
        self._config = cfg
        return cfg

    # -- rendering --------------------------------------------------------------------------
    def render(self, item: SubmitItem, group: SubmitGroup) -> str:
        paths = item.run.paths
        run_dir = paths.root.resolve()
        return render_job(
            item.spec, self.profile, run_id=item.run.run_id, run_dir=run_dir,
            results_root=run_dir.parent.parent, workdir=Path.cwd(),
            dependency=dependency_option(group.after_job_ids),
        )

    # -- submission -------------------------------------------------------------------------
    def submit(self, group: SubmitGroup) -> list[str]:
        scripts = []
        for item in group.items:
            script = self.render(item, group)
            atomic_write_text(item.run.paths.job_script, script, fsync=False)
            item.run.paths.logs.mkdir(parents=True, exist_ok=True)
            scripts.append(script)
        dependency = dependency_option(group.after_job_ids)
        if len(group.items) == 1 and not group.items[0].run.record.get("sweep_id"):
            return self._submit_one(group.items[0])
        return self._submit_arrays(group, dependency)

    def _submit_one(self, item: SubmitItem) -> list[str]:
        try:
            out = self.cli.run(["sbatch", "--parsable", str(item.run.paths.job_script.resolve())]).stdout
            job_id = parse_sbatch(out)
        except OrchError as exc:
            record_unsubmitted(item.run, self.name, exc.message)
            raise
        record_submitted(item.run, self.name, job_id)
        return [job_id]

    @staticmethod
    def _batches(group: SubmitGroup, chunk: int) -> list[list[SubmitItem]]:
        """Consecutive runs with identical resources share an array of at most `chunk` tasks."""
        batches: list[list[SubmitItem]] = []
        for item in group.items:
            if batches and batches[-1][0].spec.resources == item.spec.resources and len(batches[-1]) < chunk:
                batches[-1].append(item)
            else:
                batches.append([item])
        return batches

    def _array_script(self, group: SubmitGroup, batch: list[SubmitItem], k: int,
                      dependency: Optional[str]) -> tuple[Path, str, str]:
        """(folder, label, dispatcher script) of the k-th array of a group."""
        root = batch[0].run.paths.root.resolve().parent / ".arrays"
        label = f"{group.group_id or batch[0].run.run_id}-{k}"
        throttle = f"%{group.max_parallel}" if group.max_parallel else ""
        script = render_array(
            batch[0].spec, self.profile, run_dirs=[i.run.paths.root.resolve() for i in batch],
            array=f"0-{len(batch) - 1}{throttle}", output=str(root / f"{label}-%a.log"),
            label=f"sweep {label}", dependency=dependency,
        )
        return root, label, script

    def render_group(self, group: SubmitGroup) -> list[str]:
        """The array dispatcher scripts a sweep would be submitted as (`--dry-run` shows them, with
        their `#SBATCH --array=0-N%max_parallel` lines). A dry run asks the cluster nothing: the
        split uses the profile's `max_array_size`, else Slurm's default MaxArraySize."""
        if len(group.items) == 1 and not group.items[0].run.record.get("sweep_id"):
            return []
        chunk = self.profile.max_array_size or ClusterConfig.max_array_size
        dependency = dependency_option(group.after_job_ids)
        return [self._array_script(group, batch, k, dependency)[2]
                for k, batch in enumerate(self._batches(group, max(1, chunk)))]

    def _submit_arrays(self, group: SubmitGroup, dependency: Optional[str]) -> list[str]:
        """One array per MaxArraySize chunk; runs with different resources get their own arrays."""
        batches = self._batches(group, max(1, self.config().max_array_size))
        ids: list[str] = []
        previous: Optional[str] = None
        for k, batch in enumerate(batches):
            deps = [d for d in (dependency, f"afterany:{previous}" if previous and group.max_parallel else None) if d]
            try:
                array_id = self._submit_array(group, batch, k, ",".join(deps) or None)
            except OrchError as exc:
                self._abandon_rest(batches[k + 1:], exc)
                exc.message = f"submitted {len(ids)} of {len(group.items)} runs, then: {exc.message}"
                raise
            ids.extend(f"{array_id}_{i}" for i in range(len(batch)))
            previous = array_id
        return ids

    def _submit_array(self, group: SubmitGroup, batch: list[SubmitItem], k: int, dependency: Optional[str]) -> str:
        root, label, script = self._array_script(group, batch, k, dependency)
        root.mkdir(parents=True, exist_ok=True)
        path = root / f"{label}.sh"
        atomic_write_text(path, script, fsync=False)
        try:
            array_id = parse_sbatch(self.cli.run(["sbatch", "--parsable", str(path)]).stdout)
        except OrchError as exc:
            why = exc.message
            parallel(lambda item: record_unsubmitted(item.run, self.name, why), batch)
            raise
        parallel(lambda pair: record_submitted(pair[1].run, self.name, f"{array_id}_{pair[0]}"), list(enumerate(batch)))
        return array_id

    def _abandon_rest(self, batches: list[list[SubmitItem]], exc: OrchError) -> None:
        rest = [item for batch in batches for item in batch]
        parallel(lambda item: record_unsubmitted(item.run, self.name, f"not submitted: {exc.message}"), rest)

    # -- status -----------------------------------------------------------------------------
    def poll(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        """Statuses for many jobs: cached answers younger than query_interval, else one squeue
        (+ one sacct) for all the rest, under the shared cache's lock.

        A scheduler that does not answer (within QUERY_TIMEOUT) raises StaleAnswer (exit code 3)
        carrying the last answers seen; the failure is cached too, so every caller that was
        queued on the lock behind that query, or asks within query_interval of it, gets the same
        answer at once instead of repeating the wait. An ended job's answer is kept after the
        scheduler forgets it (MinJobAge, no accounting): its state is final.
        """
        ids = list(dict.fromkeys(j for j in job_ids if j))
        if not ids:
            return {}
        interval = self.profile.query_interval
        asked_at = time.time()
        failure: Optional[str] = None
        with self.cache.locked() as data:
            jobs: dict[str, Any] = data.setdefault("jobs", {})
            down = data.get("down") or {}
            if down and float(down.get("at", 0)) >= asked_at - interval:
                failure = str(down.get("error") or "the scheduler did not answer")
            else:
                try:
                    self._refresh_jobs(data, jobs, ids, interval)
                    data.pop("down", None)
                except BackendUnavailable as exc:
                    failure = exc.message
                    data["down"] = {"at": time.time(), "error": failure}
            out = {jid: _load(jid, (jobs.get(base_job_id(jid)) or {}).get("tasks", {}).get(jid)) for jid in ids}
            since = float((data.get("down") or {}).get("at", 0)) or None
        if failure is not None:
            raise StaleAnswer(failure, hint="the Slurm controller cannot be reached; the states shown are the "
                              "last known ones; try again later", since=since,
                              last_known={j: st for j, st in out.items() if st.state is not None})
        return out

    def _refresh_jobs(self, data: dict[str, Any], jobs: dict[str, Any], ids: list[str], interval: float) -> None:
        now = time.time()
        stale = sorted({base_job_id(j) for j in ids
                        if now - float((jobs.get(base_job_id(j)) or {}).get("at", 0)) >= interval}, key=_num)
        if not stale:
            return
        accounting = self._config_from(data).accounting
        known = {jid: _load(jid, raw) for base in stale for jid, raw in ((jobs.get(base) or {}).get("tasks") or {}).items()}
        fresh = self._query(stale, [j for j in ids if base_job_id(j) in set(stale)], accounting, data, known)
        for base in stale:
            jobs[base] = {"at": now, "tasks": {}}
        for jid, st in fresh.items():
            before = known.get(jid)
            if st.state is None and before is not None and before.state is not None and before.state.terminal:
                st = before  # the scheduler forgot an ended job: what it said last is still true
            jobs.setdefault(base_job_id(jid), {"at": now, "tasks": {}})["tasks"][jid] = _dump(st)
        prune_jobs(jobs, now, max(JOB_CACHE_KEEP, interval))

    def _query(self, bases: list[str], wanted: list[str], accounting: bool, data: dict[str, Any],
               known: dict[str, JobStatus]) -> dict[str, JobStatus]:
        proc = self.cli.run(["squeue", "-h", "-r", "-t", "all", "-o", SQUEUE_FORMAT, "-j", ",".join(bases)],
                            ok_errors=("Invalid job id specified",), timeout=QUERY_TIMEOUT)
        live = parse_squeue(proc.stdout) if proc.returncode == 0 else {}
        accounted: dict[str, JobStatus] = {}
        need = [j for j in wanted if j not in live or (live[j].state is not None and live[j].state.terminal)]
        acct_down = data.get("accounting_down") or {}
        if acct_down and time.time() - float(acct_down.get("at", 0)) < ACCOUNTING_RETRY:
            accounting = False  # slurmdbd did not answer a moment ago: do not wait for it again yet
        if accounting and need:
            try:
                out = self.cli.run(["sacct", "-X", "-n", "--parsable2", "-o", SACCT_FORMAT,
                                    "-j", ",".join(sorted({base_job_id(j) for j in need}, key=_num))],
                                   timeout=QUERY_TIMEOUT).stdout
                accounted = parse_sacct(out)
                data.pop("accounting_down", None)
            except (SlurmCommandError, OrchError) as exc:
                accounted = {}  # slurmdbd down: squeue + the run folder's markers still answer
                data["accounting_down"] = {"at": time.time(), "error": exc.message}
        merged = merge_statuses(live, accounted, sorted(set(live) | set(accounted) | set(wanted), key=_task_key))
        self._exit_codes(merged, known)
        return merged

    def _exit_codes(self, statuses: dict[str, JobStatus], known: dict[str, JobStatus]) -> None:
        """Ended jobs that no accounting answered for: their exit code and signal from `scontrol show
        job` (squeue has none) while slurmctld still remembers them, asked once per job."""
        asked = 0
        for jid, st in statuses.items():
            if st.state is None or not st.state.terminal or st.exit_code is not None or st.signal is not None:
                continue
            before = known.get(jid)
            if before is not None and before.state == st.state and (before.exit_code is not None or before.signal is not None):
                st.exit_code, st.signal = before.exit_code, before.signal
                continue
            if asked >= MAX_SHOW_JOB:
                break
            asked += 1
            proc = self.cli.run(["scontrol", "-o", "show", "job", jid], ok_errors=("Invalid job id specified",),
                                timeout=QUERY_TIMEOUT)
            shown = show_job_status(jid, proc.stdout) if proc.returncode == 0 else None
            if shown is not None and shown.state is not None and shown.state.terminal:
                st.exit_code, st.signal = shown.exit_code, shown.signal

    # -- cancel -----------------------------------------------------------------------------
    def cancel(self, job_ids: Sequence[str]) -> None:
        """scancel: Slurm sends SIGTERM (CONT first), then SIGKILL after KillWait, as local does."""
        ids = [j for j in dict.fromkeys(job_ids) if j]
        if ids:
            # a job that ended meanwhile is not an error: it is as cancelled as it will get
            self.cli.run(["scancel", *ids], ok_errors=("already completing or completed", "Invalid job id specified"))
            with self.cache.locked() as data:  # the next poll must ask again
                for jid in ids:
                    (data.get("jobs") or {}).pop(base_job_id(jid), None)


def record_submitted(run: Run, backend: str, job_id: str) -> None:
    """One run.json update per run after sbatch (a 1,000-run sweep pays 1,000 updates, not 2,000);
    a job that started first has already recorded the same job id (record.submitted knows)."""
    record.submitted(run, backend, job_id)


def record_unsubmitted(run: Run, backend: str, error: str) -> None:
    """A run whose sbatch failed (or never happened): FAILED with the reason, no job id."""
    record.submit_failed(run, backend, error)


def parallel(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """`[fn(x) for x in items]` on a few threads: each run.json update waits on an fsync, and a
    1,000-run sweep would otherwise spend seconds doing them one after another."""
    if len(items) < 8:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(fn, items))


def dependency_option(after_job_ids: Sequence[str]) -> Optional[str]:
    """`afterok:<ids>`; several tasks of one array collapse to the array id (= all its tasks)."""
    if not after_job_ids:
        return None
    per_base: dict[str, list[str]] = {}
    for jid in after_job_ids:
        per_base.setdefault(base_job_id(jid), []).append(jid)
    parts = [base if len(tasks) > 1 else tasks[0] for base, tasks in per_base.items()]
    return "afterok:" + ":".join(parts)


def parse_sbatch(out: str) -> str:
    """`sbatch --parsable` prints `<id>` or `<id>;<cluster>`."""
    text = out.strip().splitlines()[-1] if out.strip() else ""
    job_id = text.split(";", 1)[0].strip()
    if not job_id.isdigit():
        raise SlurmCommandError(f"sbatch printed no job id: {out!r}")
    return job_id


def _num(job_id: str) -> tuple[int, str]:
    return (int(job_id) if job_id.isdigit() else 0, job_id)


def _task_key(job_id: str) -> tuple[int, int, str]:
    base, _, task = job_id.partition("_")
    return (int(base) if base.isdigit() else 0, int(task) if task.isdigit() else -1, job_id)


def _dump(st: JobStatus) -> list[Any]:
    return [str(st.state) if st.state else None, st.raw_state, st.reason, st.exit_code, st.signal, st.node]


def _load(job_id: str, raw: Optional[list[Any]]) -> JobStatus:
    if not raw:
        return JobStatus(job_id, None, "", None)
    state, raw_state, reason, code, sig, node = raw
    return JobStatus(job_id, State(state) if state else None, raw_state or "", reason, code, sig, node)
