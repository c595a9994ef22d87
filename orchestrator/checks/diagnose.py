"""Why did a run end badly? A failure class plus the log lines that show it.

Why: "failed" alone sends a researcher to read logs; the retry policy needs more: a preempted or
node-failed run should be resubmitted, a tokenization error must not be (it would fail again).
The class comes from, in order: the backend's word (NODE_FAIL, OUT_OF_MEMORY, TIMEOUT,
PREEMPTED), a cancel request, the exit code and signal, and the *tail* of the attempt's stderr
and stdout (read backwards from the end, so a 10 GB log costs the same as a small one). A full
disk or an I/O error (`[Errno 28] No space left on device: 'path'`, EIO) is `disk_full` or
`io_error` with that path, never the user's code. The result is recorded in run.json as
`failure: {class, evidence, summary, ...}`; every evidence and
exception line is masked by `orchestrator.secrets.redact` first.
"""
from __future__ import annotations

import math
import os
import re
import signal as _signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from orchestrator.record.atomicio import tail_jsonl
from orchestrator.record.record import now_iso
from orchestrator.record.tree import Run
from orchestrator.secrets import redact
from orchestrator.record.states import EXIT_REQUEUE

TAIL_BYTES = 64 * 1024
TAIL_LINES = 400
MAX_EVIDENCE = 6
MAX_LINE = 300


@dataclass
class Diagnosis:
    cls: str  # one of spec.FAILURE_CLASSES
    summary: str
    evidence: list[str] = field(default_factory=list)
    exception: Optional[str] = None  # the exception line, when there was a traceback
    exit_code: Optional[int] = None
    signal: Optional[int] = None
    attempt: Optional[int] = None

    def to_dict(self) -> dict[str, Any]:
        d = {"class": self.cls, "summary": self.summary, "evidence": self.evidence,
             "exception": self.exception, "exit_code": self.exit_code, "signal": self.signal,
             "attempt": self.attempt, "diagnosed_at": now_iso()}
        return {k: v for k, v in d.items() if v is not None}


# ------------------------------------------------------------------------------ reading tails
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def read_tail(path: Path, max_bytes: int = TAIL_BYTES, max_lines: int = TAIL_LINES) -> list[str]:
    """The last lines of a text file, seeking from the end; progress-bar `\\r` frames collapsed."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            start = max(0, size - max_bytes)
            fh.seek(start)
            data = fh.read()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError):
        return []
    text = data.decode("utf-8", "replace")
    lines = text.split("\n")
    if start > 0:
        lines = lines[1:]  # the first line is cut
    out = []
    for line in lines:
        line = _ANSI.sub("", line).rsplit("\r", 1)[-1].rstrip()
        if line:
            out.append(line)
    return out[-max_lines:]


# ------------------------------------------------------------------------------ patterns
def _rx(*parts: str) -> re.Pattern[str]:
    return re.compile("|".join(parts), re.IGNORECASE)


CUDA_OOM = _rx(r"CUDA out of memory", r"torch\.cuda\.OutOfMemoryError", r"OutOfMemoryError",
               r"CUBLAS_STATUS_ALLOC_FAILED", r"CUDA error: out of memory", r"HIP out of memory",
               r"RESOURCE_EXHAUSTED")
HOST_OOM = _rx(r"^MemoryError\b", r"DefaultCPUAllocator: can.t allocate memory", r"\bMemoryError\b", r"oom[-_ ]kill", r"Out of memory: Kill", r"OUT_OF_MEMORY",
               r"std::bad_alloc", r"Cannot allocate memory", r"failed to map segment from shared object",
               r"Some of your processes may have been killed by the cgroup out-of-memory handler",
               r"exceeded (?:job )?memory limit")
NCCL = _rx(r"\bNCCL (?:error|WARN|INFO.*(?:error|timeout))", r"nccl(?:Internal|System|Remote|Unhandled\w*|Invalid\w*)Error",
           r"ProcessGroupNCCL", r"Watchdog caught collective operation timeout", r"DistBackendError",
           r"RendezvousTimeoutError", r"RendezvousConnectionError", r"\bNCCL_TIMEOUT\b", r"ncclCommInitRank",
           r"gloo.*(?:Connection|timed out|Timeout)", r"c10d.*(?:timed out|Connection reset|Broken pipe)",
           r"collective operation timeout")
DISK_FULL = _rx(r"\[Errno 28\]", r"No space left on device", r"\bENOSPC\b", r"\[Errno 122\]",
                r"Disk quota exceeded", r"\bEDQUOT\b", r"StorageFull", r"QuotaExceeded")
IO_ERROR = _rx(r"\[Errno 5\]", r"Input/output error", r"\bEIO\b")
# torch.save's writer says only that a write came up short (no errno): on a cluster, a full disk or quota
WRITE_FAILED = _rx(r"PytorchStreamWriter failed writing file", r"unexpected pos \d+ vs \d+",
                   r"basic_ios::clear: iostream error", r"\bfile write failed\b")
ERRNO_PATH = re.compile(r"\[Errno (\d+)\] ([^:'\n]+)(?::\s*'([^']*)')?")
PREEMPT = _rx(r"DUE TO PREEMPTION", r"\bpreempted\b", r"job requeued")
TIME_LIMIT = _rx(r"DUE TO TIME LIMIT", r"TIME LIMIT", r"time limit exceeded")
NODE_FAIL = _rx(r"DUE TO NODE FAILURE", r"NODE_FAIL", r"node failure")
DIVERGED = _rx(r"loss is (?:nan|inf)", r"non-?finite loss", r"\bloss\b[^\n]*\b(?:nan|inf)\b", r"diverged",
               r"FloatingPointError", r"detected (?:nan|inf)", r"gradient(?:s)? (?:is|are) (?:nan|inf)")
DATA_EXC = _rx(r"^(?:[\w.]+\.)?(?:UnicodeDecodeError|UnicodeEncodeError|UnicodeError|JSONDecodeError|ArrowInvalid"
               r"|ArrowTypeError|ParserError|EmptyDataError|DatasetGenerationError|DatasetNotFoundError"
               r"|\w*DataError|\w*DatasetError|\w*Tokeni[sz]\w*Error|\w*CorpusError|DataLoaderError)\b")
DATA_MSG = _rx(r"tokeni[sz]", r"\bdataset\b", r"\bdata\.(?:path|hub|builtin|text_field)\b", r"\bcorpus\b",
               r"\bvocab", r"codec can't decode", r"\bshard\b", r"fewer than block_size")
DATA_FRAME = re.compile(r'File "[^"]*(?:/data|/datasets?|tokeni[sz]\w*|/corpora/|dataloader|_data)[^"/]*\.py"',
                        re.IGNORECASE)
TRACEBACK = "Traceback (most recent call last):"
EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit|Warning|Failure|Fault)|[A-Z]\w*Error|"
                      r"MemoryError|KeyboardInterrupt|AssertionError|StopIteration)(?::\s?(.*))?$")


def _matches(lines: Iterable[str], rx: re.Pattern[str]) -> list[str]:
    return [ln for ln in lines if rx.search(ln)]


def _clip(line: str) -> str:
    line = redact(line.strip())
    return line if len(line) <= MAX_LINE else line[: MAX_LINE - 3] + "..."


def last_exception(lines: list[str]) -> tuple[Optional[str], list[str]]:
    """(the exception line of the last traceback, that traceback's frame lines)."""
    starts = [i for i, ln in enumerate(lines) if ln.strip() == TRACEBACK or ln.startswith(TRACEBACK)]
    if not starts:
        # no traceback header left in the tail: accept a bare exception line near the end
        for ln in reversed(lines[-20:]):
            if EXC_LINE.match(ln.strip()) and not ln.startswith(" "):
                return ln.strip(), []
        return None, []
    block = lines[starts[-1] + 1:]
    frames: list[str] = []
    exc: Optional[str] = None
    for ln in block:
        if ln.startswith((" ", "\t")):
            frames.append(ln.strip())
            continue
        if EXC_LINE.match(ln.strip()) or (":" in ln and not ln.startswith(("During handling", "The above"))):
            exc = ln.strip()
            break
    return exc, frames


_LIBRARY = re.compile(r'File "(?:<frozen |[^"]*/(?:lib/python3[^/]*|site-packages|dist-packages)/)')


def _where(frames: list[str]) -> Optional[str]:
    """`file.py:LINE in func` of the innermost frame in the user's code (not the stdlib or a package)."""
    files = [f for f in frames if f.startswith("File ")]
    if not files:
        return None
    own = [f for f in files if not _LIBRARY.match(f)]
    m = re.match(r'File "([^"]+)", line (\d+)(?:, in (\S+))?', (own or files)[-1])
    if not m:
        return None
    return f"{Path(m.group(1)).name}:{m.group(2)}" + (f" in {m.group(3)}" if m.group(3) else "")


def _signal_name(sig: Optional[int]) -> str:
    if sig is None:
        return "?"
    try:
        return _signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def disk_trouble(lines: list[str]) -> Optional[tuple[str, str, list[str]]]:
    """(disk_full | io_error, summary naming the path, evidence lines) when the lines show a full
    disk, an exceeded quota or an I/O error (an OSError's `[Errno 28] ...: 'path'` or the like), or
    a write that came up short without an errno (torch.save's stream writer: a full disk, mostly)."""
    for cls, rx, what, verb in (("disk_full", DISK_FULL, "no space left on device", "writing"),
                                ("io_error", IO_ERROR, "I/O error", "on")):
        ev = _matches(lines, rx)
        if not ev:
            continue
        paths = [m.group(3) for m in (ERRNO_PATH.search(e) for e in ev) if m and m.group(3)]
        if cls == "disk_full" and any("quota" in e.lower() for e in ev):
            what = "disk quota exceeded"
        return cls, what + (f" {verb} {paths[-1]}" if paths else ""), ev[-3:]
    ev = _matches(lines, WRITE_FAILED)
    if ev:
        where = _where(last_exception(lines)[1])
        return ("disk_full", "a file write came up short" + (f" at {where}" if where else "")
                + " (the disk is probably full or over quota)", ev[-3:])
    return None


def _nonfinite_tail(diag_tail: list[dict[str, Any]]) -> Optional[str]:
    for rec in reversed(diag_tail):
        for key in ("loss", "train_loss", "val_loss"):
            if key in rec:
                v = rec[key]
                if v is None or (isinstance(v, str) and v.lower() in ("nan", "inf", "-inf")) or (
                        isinstance(v, float) and not math.isfinite(v)):
                    return f"train_diagnostics step {rec.get('step')}: {key} = {'NaN' if v is None else v}"
        if rec.get("stop_reason") and "diverg" in str(rec.get("stop_reason")):
            return f"train_diagnostics step {rec.get('step')}: stop_reason {rec['stop_reason']}"
    return None


def _is_data_error(exc: str, frames: list[str]) -> bool:
    """A data/tokenization exception type or message, or raised from a data-loading module."""
    if DATA_EXC.match(exc) or DATA_MSG.search(exc):
        return True
    files = [f for f in frames if f.startswith("File ")]
    # the deepest frame of *our* code decides: library frames (pathlib, json) sit below it
    ours = [f for f in files if "/lib/python3" not in f or "/site-packages/trainers/" in f]
    return bool(ours) and bool(DATA_FRAME.search(ours[-1]))


# ------------------------------------------------------------------------------ classification
def classify(
    *,
    backend_state: Optional[str] = None,
    exit_code: Optional[int] = None,
    signal: Optional[int] = None,
    stderr: Optional[list[str]] = None,
    stdout: Optional[list[str]] = None,
    diagnostics_tail: Optional[list[dict[str, Any]]] = None,
    cancel_requested: bool = False,
    stalled: bool = False,
    stop_reason: Optional[str] = None,
    wrapper_cause: Optional[str] = None,
) -> Diagnosis:
    """The failure class of one ended attempt, from whatever is known about it."""
    err, out = stderr or [], stdout or []
    lines = out + err  # stderr last: the traceback is usually at its end
    raw = (backend_state or "").upper()
    if exit_code is not None and exit_code > 128 and signal is None and exit_code - 128 < 65:
        signal = exit_code - 128  # a shell reports death by signal N as 128+N
    d = Diagnosis("unknown", "", exit_code=exit_code, signal=signal)
    exc, frames = last_exception(err) if err else (None, [])
    if exc is None and out:
        exc, frames = last_exception(out)
    d.exception = _clip(exc) if exc else None

    def done(cls: str, summary: str, evidence: Iterable[str] = ()) -> Diagnosis:
        d.cls, d.summary = cls, summary
        ev = [_clip(e) for e in evidence if e]
        d.evidence = list(dict.fromkeys(ev))[-MAX_EVIDENCE:]
        return d

    code_ev = []
    if exit_code is not None:
        code_ev.append(f"exit code {exit_code}")
    if signal is not None:
        code_ev.append(f"killed by {_signal_name(signal)}")
    if raw:
        code_ev.append(f"backend state {raw}")

    due_to = _matches(lines[-30:], PREEMPT) + _matches(lines[-30:], TIME_LIMIT) + _matches(lines[-30:], NODE_FAIL)
    if cancel_requested or wrapper_cause == "cancelled" or (raw.startswith("CANCELLED") and not due_to):
        return done("cancelled", "cancelled by a user", code_ev)
    node_ev = _matches(lines[-30:], NODE_FAIL)
    if raw == "NODE_FAIL" or (node_ev and raw != "COMPLETED"):
        return done("node_fail", "the node failed", node_ev + code_ev)
    disk = disk_trouble(lines)
    if raw == "VANISHED":  # the job (wrapper included) disappeared without recording an exit
        oom = _matches(lines, HOST_OOM) + _matches(lines, CUDA_OOM)
        if oom:
            return done("oom", "out of memory (the job was killed)", oom[-3:])
        if disk:
            return done(disk[0], f"{disk[1]} (the job died without recording its end)", disk[2])
        return done("node_fail", "the job vanished without recording an exit (node failure or killed)",
                    ["the backend no longer knows the job and no exit status was written"] + lines[-2:])
    if raw == "PREEMPTED" or wrapper_cause == "preempted" or (_matches(lines[-30:], PREEMPT)
                                                             and exit_code == EXIT_REQUEUE):
        return done("preempted", "preempted" + (" (the trainer checkpointed)" if exit_code == EXIT_REQUEUE else ""),
                    _matches(lines, PREEMPT)[-2:] + code_ev)
    if raw in ("TIMEOUT", "DEADLINE") or wrapper_cause == "timeout" or _matches(lines[-30:], TIME_LIMIT):
        return done("timeout", "hit the time limit", _matches(lines, TIME_LIMIT)[-2:] + code_ev)
    ev = _matches(lines, CUDA_OOM)
    if ev:
        return done("oom", "CUDA out of memory" + (f": {d.exception}" if d.exception else ""), ev[-3:])
    ev = _matches(lines, HOST_OOM)
    if raw == "OUT_OF_MEMORY" or ev:
        return done("oom", "out of host memory" + (f" ({d.exception})" if d.exception else ""), ev[-3:] + code_ev)
    if disk:  # ENOSPC/EDQUOT/EIO, in a traceback or in the job wrapper's own words: not the user's code
        return done(disk[0], disk[1], disk[2] + code_ev)
    if stalled or wrapper_cause == "stalled":
        return done("stalled", "stopped making progress (no heartbeat) and was stopped", code_ev)
    ev = _matches(lines, NCCL)
    if ev:
        return done("nccl", "NCCL/communication error or timeout", ev[-3:] + ([exc] if exc else []))
    if exc and _is_data_error(exc, frames):
        where = _where(frames)
        return done("data_error", f"data error: {d.exception}" + (f" (at {where})" if where else ""),
                    [f for f in frames if f.startswith("File ")][-2:] + [exc])
    nf = _nonfinite_tail(diagnostics_tail or [])
    div = _matches(lines, DIVERGED)
    if nf or div or (stop_reason and "diverg" in stop_reason):
        return done("diverged", "the loss became NaN/inf (diverged)",
                    ([nf] if nf else []) + div[-3:] + ([f"stop_reason: {stop_reason}"] if stop_reason else []))
    if exc:
        where = _where(frames)
        return done("user_error", f"{d.exception}" + (f" (at {where})" if where else ""),
                    [f for f in frames if f.startswith("File ")][-2:] + [exc])
    if signal is not None:
        return done("killed", f"killed by {_signal_name(signal)}", code_ev)
    if raw == "FAILED" and exit_code is None and not lines:
        return done("unknown", "the job ended without output or exit status", code_ev)
    return done("unknown", f"failed with exit code {exit_code}" if exit_code is not None else "failed",
                code_ev + lines[-3:])


def attempt_lines(lines: list[str], n: int) -> list[str]:
    """The lines of a log shared by all attempts (the scheduler's) that belong to attempt n: those
    after the job wrapper's "orch: attempt N started" marker. A log with markers but none for n
    holds nothing of n (it never started); a tail with no marker at all is taken whole."""
    marks = [i for i, ln in enumerate(lines) if ln.startswith("orch: attempt ")]
    if not marks:
        return lines
    mine = [i for i in marks if lines[i].startswith(f"orch: attempt {n} started")]
    return lines[mine[-1] + 1:] if mine else []


def diagnose_run(run: Run, *, backend_state: Optional[str] = None, stalled: bool = False,
                 exit_code: Optional[int] = None, signal: Optional[int] = None) -> Diagnosis:
    """Classify the newest attempt of `run` from its record, logs and diagnostics (`exit_code` and
    `signal`: the scheduler's, for an attempt whose wrapper recorded none)."""
    rec = run.reload()
    attempts = rec.get("attempts") or []
    att = attempts[-1] if attempts else {}
    n = att.get("n") or len(attempts) or 1
    if exit_code is None:
        exit_code = att.get("exit_code", rec.get("exit_code"))
    sig = att.get("signal") if signal is None else signal
    state = backend_state or att.get("backend_state")
    if not state and rec.get("state") in ("CANCELLED", "TIMEOUT", "PREEMPTED"):
        state = rec["state"]  # the wrapper's or scheduler's verdict, when nothing better is known
    d = classify(
        backend_state=state,
        exit_code=exit_code,
        signal=sig,
        stderr=read_tail(run.paths.stderr(n)) + attempt_lines(read_tail(run.paths.scheduler_log, 16 * 1024, 60), n),
        stdout=read_tail(run.paths.stdout(n)),
        diagnostics_tail=tail_jsonl(run.paths.diagnostics, 5),
        cancel_requested=_cancel_requested(run),
        stalled=stalled or att.get("cause") == "stalled",
        stop_reason=rec.get("stop_reason"),
        wrapper_cause=att.get("cause"),
    )
    d.attempt = n
    return d


def _cancel_requested(run: Run) -> bool:
    """`orch cancel` asked this run to stop (the monitor's stop of a stalled job is not a cancel)."""
    try:
        return not run.paths.cancel_request.read_text(errors="replace").startswith("stalled")
    except OSError:
        return False


def record_failure(run: Run, d: Diagnosis) -> bool:
    """Store the diagnosis as run.json `failure` and on its attempt; False when the run moved on
    (a new attempt started) and the diagnosis is stale."""
    from orchestrator.record.record import Failure, IllegalTransition, record_failure as store

    try:
        store(run, Failure.from_dict(d.to_dict()))
    except IllegalTransition:
        return False
    return True


def ensure_diagnosed(run: Run, *, backend_state: Optional[str] = None) -> Optional[Diagnosis]:
    """Diagnose a failed run whose failure is not yet classified from its logs (cheap when it is)."""
    rec = run.reload()
    if rec.get("state") in (None, "COMPLETED", "RUNNING", "QUEUED", "PENDING"):
        return None
    f = rec.get("failure") or {}
    if f.get("evidence") is not None and f.get("attempt") == len(rec.get("attempts") or []):
        return None
    d = diagnose_run(run, backend_state=backend_state)
    record_failure(run, d)
    return d
