"""Tell people what `orch monitor` saw: a summary on stdout, and per-run hooks from `monitor:`.

Why: a failed run that nobody hears about sits dead until morning. Hooks are opt-in per spec:
`on_event` (a command, split with shlex and run without a shell, the event JSON on stdin),
`webhook` (a JSON POST with a short timeout) and `email` (through the system's `sendmail`).
A hook that fails is reported, never fatal: the monitor's own work must not depend on Slack.
Nothing secret is printed: evidence is redacted, and webhook URLs are shown by host only.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from email.message import EmailMessage
from typing import Any, Iterable, Optional, TextIO

from orchestrator.secrets import redact

HOOK_TIMEOUT = 30.0
WEBHOOK_TIMEOUT = 10.0

# event kind -> the word shown in the summary
LABELS = {
    "failed": "FAILED", "retried": "RETRIED", "retry_scheduled": "RETRY-WAIT", "gave_up": "GAVE-UP",
    "not_retried": "NO-RETRY", "stalled": "STALLED", "recovered": "RECOVERED", "vanished": "VANISHED",
    "completed": "DONE", "checks_failed": "CHECKS", "preserved": "PRESERVED", "preserve_failed": "PRESERVE!",
    "preserve_skipped": "PRESERVE-", "retry_failed": "RETRY!", "oom_halved": "OOM-HALVED", "killed_stalled": "KILLED",
    "backend_unavailable": "BACKEND!", "alert_failed": "ALERT!",
}
# events worth a hook call (the others are bookkeeping)
NOTIFY = {"failed", "retried", "gave_up", "not_retried", "stalled", "vanished", "completed", "checks_failed",
          "preserve_failed", "retry_failed", "killed_stalled"}


def describe(ev: dict[str, Any]) -> str:
    """One line for a human, e.g. `FAILED  run-1 (attempt 1): data_error: ValueError: ... (at data.py:65)`."""
    label = LABELS.get(ev.get("event", ""), str(ev.get("event", "")).upper())
    who = ev.get("run_id", "-")
    att = f" (attempt {ev['attempt']})" if ev.get("attempt") else ""
    text = ev.get("summary") or ""
    cls = str(ev.get("class") or "")
    if cls and not text.lower().startswith((cls, cls.replace("_", " "))):
        text = f"{ev['class']}: {text}" if text else str(ev["class"])
    return redact(f"{label:11} {who}{att}: {text}".rstrip(": "))


def summary_lines(events: list[dict[str, Any]], active: int) -> list[str]:
    """What changed since the last pass; empty when nothing did (cron mails any output)."""
    if not events:
        return []
    counts: dict[str, int] = {}
    for ev in events:
        counts[ev["event"]] = counts.get(ev["event"], 0) + 1
    head = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in counts.items())
    lines = [f"orch monitor: {active} active; {head}"]
    lines += ["  " + describe(ev) for ev in events]
    for ev in events:  # the exception line, when the one-line summary does not already show it
        if ev.get("exception") and ev.get("event") == "failed" and ev["exception"] not in (ev.get("summary") or ""):
            lines.append(f"    {ev['run_id']}: {redact(ev['exception'])}")
    return lines


def print_summary(events: list[dict[str, Any]], active: int, out: Optional[TextIO] = None) -> None:
    import sys

    for line in summary_lines(events, active):
        print(line, file=out or sys.stdout)


# ------------------------------------------------------------------------------ hooks
def _safe_url(url: str) -> str:
    p = urllib.parse.urlsplit(url)
    return f"{p.scheme}://{p.hostname or '?'}/..."


def run_command_hook(command: str, event: dict[str, Any]) -> Optional[str]:
    """Run `command` (no shell) with the event JSON on stdin; an error string or None."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        return f"on_event: cannot split the command: {exc}"
    if not argv:
        return "on_event: empty command"
    try:
        res = subprocess.run(argv, input=(json.dumps(event) + "\n").encode(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, timeout=HOOK_TIMEOUT, close_fds=True)
    except FileNotFoundError:
        return f"on_event: command not found: {argv[0]}"
    except subprocess.TimeoutExpired:
        return f"on_event: {argv[0]} did not finish within {HOOK_TIMEOUT:.0f}s"
    except OSError as exc:
        return f"on_event: {argv[0]}: {exc}"
    if res.returncode != 0:
        tail = redact(res.stderr.decode("utf-8", "replace").strip().splitlines()[-1:][0]) if res.stderr.strip() else ""
        return f"on_event: {argv[0]} exited {res.returncode}" + (f": {tail}" if tail else "")
    return None


def post_webhook(url: str, event: dict[str, Any]) -> Optional[str]:
    """POST the event as JSON (with a `text` line for Slack-style hooks); an error string or None."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        return "webhook: only http(s) URLs are allowed"
    body = json.dumps({"text": describe(event), "event": event}).encode()
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json", "User-Agent": "orch-monitor"})
    try:
        with urllib.request.urlopen(req, timeout=WEBHOOK_TIMEOUT) as resp:  # noqa: S310 - scheme checked
            resp.read(1024)
    except urllib.error.HTTPError as exc:
        return f"webhook {_safe_url(url)}: HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"webhook {_safe_url(url)}: {reason}"
    return None


def send_email(to: str, event: dict[str, Any]) -> Optional[str]:
    """Through `sendmail -t` when the system has one; an error string or None."""
    sendmail = shutil.which("sendmail") or next(
        (p for p in ("/usr/sbin/sendmail", "/usr/lib/sendmail") if os.path.exists(p)), None)
    if not sendmail:
        return "email: no sendmail on this machine"
    if "\n" in to or "\r" in to:
        return "email: invalid address"
    msg = EmailMessage()
    msg["To"] = to
    msg["Subject"] = f"[orch] {describe(event)[:120]}"
    msg.set_content(describe(event) + "\n\n" + json.dumps(event, indent=2, default=str))
    try:
        res = subprocess.run([sendmail, "-t", "-oi"], input=msg.as_bytes(), timeout=HOOK_TIMEOUT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"email: {exc}"
    return None if res.returncode == 0 else f"email: sendmail exited {res.returncode}"


def dispatch(event: dict[str, Any], monitor_spec: Any) -> list[str]:
    """Send one event to the run's configured hooks; the list of problems (empty when all went)."""
    if monitor_spec is None or event.get("event") not in NOTIFY:
        return []
    problems = []
    if getattr(monitor_spec, "on_event", None):
        problems.append(run_command_hook(monitor_spec.on_event, event))
    if getattr(monitor_spec, "webhook", None):
        problems.append(post_webhook(monitor_spec.webhook, event))
    if getattr(monitor_spec, "email", None):
        problems.append(send_email(monitor_spec.email, event))
    return [p for p in problems if p]


def dispatch_all(events: Iterable[dict[str, Any]], spec_for: Any) -> list[dict[str, Any]]:
    """Dispatch every event with `spec_for(run_id) -> MonitorSpec | None`; returns alert_failed events."""
    failed = []
    for ev in events:
        for problem in dispatch(ev, spec_for(ev.get("run_id"))):
            failed.append({"event": "alert_failed", "run_id": ev.get("run_id"), "summary": problem,
                           "for_event": ev.get("event")})
    return failed
