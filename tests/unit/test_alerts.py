"""Alert hooks: no shell, bounded, redacted; e-mail through a (fake) sendmail; quiet when nothing changed."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace

from orchestrator.monitor.alerts import describe, dispatch, run_command_hook, send_email, summary_lines

EV = {"event": "failed", "run_id": "r-1", "attempt": 1, "class": "data_error",
      "summary": "data error: UnicodeDecodeError: bad byte (at data.py:65)",
      "exception": "UnicodeDecodeError: bad byte"}


def test_command_hook_gets_json_and_never_a_shell(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    canary = tmp_path / "pwned"
    assert run_command_hook(f"echo ; touch {canary} $(touch {canary}) `touch {canary}`", EV) is None
    assert not canary.exists()  # ';', '$()' and backticks are plain arguments to echo
    assert run_command_hook(f"tee -a {out}", EV) is None
    assert json.loads(out.read_text().splitlines()[0])["class"] == "data_error"
    assert "exited 1" in (run_command_hook("false", EV) or "")
    assert "not found" in (run_command_hook("definitely-not-a-command-42", EV) or "")
    assert "cannot split" in (run_command_hook("echo 'unterminated", EV) or "")


def test_email_through_sendmail(tmp_path: Path, monkeypatch) -> None:
    mail = tmp_path / "mail.txt"
    fake = tmp_path / "sendmail"
    fake.write_text(f"#!/bin/sh\ncat > {mail}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert send_email("me@example.org", EV) is None
    text = mail.read_text()
    assert "To: me@example.org" in text and "Subject: [orch] FAILED" in text and "UnicodeDecodeError" in text
    assert "invalid address" in (send_email("a@b\nBcc: x@y", EV) or "")


def test_dispatch_only_for_notable_events_and_collects_problems(tmp_path: Path) -> None:
    spec = SimpleNamespace(on_event="false", webhook="ftp://example.org/x", email=None)
    problems = dispatch(EV, spec)
    assert len(problems) == 2 and any("only http(s)" in p for p in problems)
    assert dispatch({**EV, "event": "retry_scheduled"}, spec) == []
    assert dispatch(EV, None) == []


def test_summary_is_empty_when_nothing_changed_and_redacts() -> None:
    assert summary_lines([], active=3) == []
    lines = summary_lines([{**EV, "exception": "ValueError: token=abc123secret"}], active=2)
    assert lines[0].startswith("orch monitor: 2 active; 1 failed")
    assert "abc123secret" not in "\n".join(lines)
    assert describe(EV).startswith("FAILED      r-1 (attempt 1): data error: UnicodeDecodeError")
    assert describe({**EV, "summary": "bad byte"}).endswith("data_error: bad byte")
