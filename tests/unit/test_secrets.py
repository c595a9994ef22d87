"""orchestrator/secrets.py: names and value shapes (true and false positives), text, mappings,
command lines and files; and its users: provenance's environment and command line."""
from __future__ import annotations

import json
import random
import string

import pytest
import yaml

from orchestrator.lifecycle.provenance import safe_env
from orchestrator.secrets import (MASK, is_secret_file, is_secret_name, looks_like_secret, redact, redact_argv,
                                  redact_file, redact_lines, redact_mapping, secret_env)

_R = random.Random(7)


def _rand(n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    while True:
        s = "".join(_R.choice(alphabet) for _ in range(n))
        if any(c.isupper() for c in s) and any(c.islower() for c in s) and any(c.isdigit() for c in s):
            return s


GH = "ghp_" + _rand(36)
HF = "hf_" + _rand(34)
RANDOM40 = _rand(40)
JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"


@pytest.mark.parametrize("name", [
    "DBPASSWORD", "DB_PASSWORD", "GHTOKEN", "GH_TOKEN", "HF_TOKEN", "WANDB_API_KEY", "MYKEY", "API_KEY", "apiKey",
    "HFToken", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "SECRET_KEY_BASE", "CLIENT_SECRETS",
    "GOOGLE_APPLICATION_CREDENTIALS", "MYSQL_PWD", "BASIC_AUTH", "PASSPHRASE", "password", "token", "TOKEN2",
    "DB_PASSWORD_PROD", "use_auth_token", "env.GHTOKEN", "x-api-key", "Cookie", "PGPASSWORD",
])
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize("name", [
    "MONKEY", "DONKEY", "TURKEY", "HOTKEY", "PYTHONHASHSEED", "TOKENIZERS_PARALLELISM", "max_tokens", "tokens_seen",
    "tokens_per_sec", "last_tokens_per_sec", "KeyError", "key_count", "num_keys", "eos_token", "pad_token_id",
    "bos_token", "token_type_ids", "token_budget", "SSH_AUTH_SOCK", "PWD", "OLDPWD", "DB_PASSWORD_FILE",
    "query_key_value", "n_kv_head", "SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES", "val_loss", "AUTHOR", "KEYBOARD",
    "pass@1", "train.max_tokens",
])
def test_not_secret_names(name: str) -> None:
    assert not is_secret_name(name)


@pytest.mark.parametrize("value", [
    GH, "gho_" + _rand(36), "ghs_" + _rand(36), "github_pat_" + _rand(40), "glpat-" + _rand(20), HF,
    "sk-" + _rand(48), "sk-proj-" + _rand(60), "sk-ant-api03-" + _rand(80), "AKIAIOSFODNN7EXAMPLE", JWT,
    "xoxb-123456789012-123456789012-" + _rand(24), "AIza" + _rand(35), RANDOM40, _rand(32),
    "https://user:hunter2@example.com/repo.git", "postgres://admin:pa55word@db:5432/x", "Bearer abcdefgh12345678",
    "https://hooks.slack.com/services/T0000/B0000/" + _rand(24),
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEow" + _rand(60) + "\n-----END RSA PRIVATE KEY-----",
])
def test_secret_values(value: str) -> None:
    assert looks_like_secret(value), value
    assert MASK in redact(value)


@pytest.mark.parametrize("value", [
    "0123456789abcdef0123456789abcdef01234567",  # a git SHA
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",  # a sha256 digest
    "123e4567-e89b-12d3-a456-426614174000",  # a UUID
    "quickstart-20250314-101500-0a1b", "qs-sweep-20250314-101500-ab12_checkpoint_step_000200",
    "/work/results/quickstart/quickstart-20250314-101500-0a1b/ckpt/step-00000300/model/model.safetensors",
    "sk-learn-baseline-20250314-101500", "hf_hub_download", "TOKENIZERS_PARALLELISM=false", "max_tokens: 100000",
    "KeyError: 'val_loss'", "token embeddings", "step 100: loss 1.2345 val_loss 1.4000 tokens_per_sec 12,000",
    "HF_TOKEN=$HF_TOKEN", "api_key: null", "password = get_password()", "12+34=46", "Authorization header missing",
    "CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate(handle)", "https://example.com/a/b?x=1",
])
def test_not_secret_values(value: str) -> None:
    assert redact(value) == value


@pytest.mark.parametrize("text,secret", [
    ("password=s3cr3t", "s3cr3t"), ("token=abc123secret", "abc123secret"),
    ("export DBPASSWORD='hunter2'", "hunter2"), ("DBPASSWORD: hunter2", "hunter2"),
    ('{"api_key": "xyz123", "n": 3}', "xyz123"), ("url https://user:hunter2@example.com/x", "hunter2"),
    ("Authorization: Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"), ("Authorization: Bearer abc.def.ghi123", "abc.def.ghi123"),
    (f"key={'AKIAIOSFODNN7EXAMPLE'} secret=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "wJalrXUtnFEMI"),
    (f"clone https://{GH}@github.com/me/x", GH), (f"?token={RANDOM40}&x=1", RANDOM40),
    (f"HF_TOKEN={HF} python train.py", HF),
])
def test_redact_text(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out and MASK in out
    assert redact(out) == out  # idempotent


def test_redact_keeps_the_rest() -> None:
    assert redact("url https://user:hunter2@example.com/x") == f"url https://user:{MASK}@example.com/x"
    assert redact("export DBPASSWORD='hunter2' && run") == f"export DBPASSWORD='{MASK}' && run"
    assert redact("Authorization: Bearer abcdefghij") == f"Authorization: Bearer {MASK}"
    assert redact("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\nnext") == f"{MASK}\nnext"


def test_code_mode_masks_literals_not_expressions() -> None:
    patch = f'+DB_PASSWORD = "hunter2"\n+token = os.environ["X"]\n+key = {GH!r}\n+x = "{RANDOM40}"\n'
    out = redact(patch, code=True)
    assert "hunter2" not in out and GH not in out
    assert 'os.environ["X"]' in out and RANDOM40 in out  # no entropy rule: a binary diff is base85


def test_redact_mapping() -> None:
    obj = {"env": {"WANDB_API_KEY": "abc", "HF_TOKEN": "x", "OMP_NUM_THREADS": "1", "DBPASSWORD": 12345678},
           "tokens_per_sec": 5.0, "note": "hf_" + "a" * 30, "password": "p", "key_count": 3,
           "tokenizer": {"eos_token": "</s>", "pad_token_id": 0}, "creds": [{"secret": "s"}],
           "api_keys_disabled": True, "hf_token": None, "flags": {"HF_HUB_DISABLE_IMPLICIT_TOKEN": "1"}}
    clean = redact_mapping(obj)
    assert clean["env"] == {"WANDB_API_KEY": MASK, "HF_TOKEN": MASK, "OMP_NUM_THREADS": "1", "DBPASSWORD": MASK}
    assert clean["note"] == MASK and clean["password"] == MASK and clean["creds"] == [{"secret": MASK}]
    assert clean["tokens_per_sec"] == 5.0 and clean["key_count"] == 3 and clean["tokenizer"] == obj["tokenizer"]
    assert clean["hf_token"] is None and clean["flags"] == obj["flags"] and clean["api_keys_disabled"] is True
    assert redact_mapping({"val_loss": 1.0, "run_id": "q-20250314-101500-0a1b"}) == {"val_loss": 1.0,
                                                                                   "run_id": "q-20250314-101500-0a1b"}
    assert obj["env"]["WANDB_API_KEY"] == "abc"  # a copy


def test_redact_argv() -> None:
    argv = ["orch", "submit", "s.yaml", "--set", f"env.GHTOKEN={GH}", "--set", "train.lr=0.1", "--token", "xyz",
            "--password=pw", "--set", f"config.note={HF}", "--api-key", "k-123", "--wait", "--name", "run1"]
    out = redact_argv(argv)
    blob = " ".join(out)
    for s in (GH, "xyz", "=pw", HF, "k-123"):
        assert s not in blob, s
    assert out[:4] == ["orch", "submit", "s.yaml", "--set"] and "train.lr=0.1" in out
    assert out[-3:] == ["--wait", "--name", "run1"] and "--token" in out


def test_secret_env() -> None:
    env = {"MY_VAR": GH, "GHTOKEN": "short", "PATH": "/usr/bin", "ORCH_NOTE": "hello", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    assert sorted(secret_env(env)) == ["GHTOKEN", "MY_VAR"]


def test_provenance_env() -> None:
    env = {"HF_TOKEN": HF, "WANDB_API_KEY": "k", "DB_PASSWORD": "p", "ORCH_API_TOKEN": "abc", "SLURM_COMMENT": GH,
           "PYTHONHASHSEED": "0", "TOKENIZERS_PARALLELISM": "false", "SLURM_JOB_ID": "12", "HOME": "/root",
           "ORCH_NOTE": f"see {JWT}"}
    assert safe_env(env) == {"PYTHONHASHSEED": "0", "SLURM_JOB_ID": "12"}


def test_secret_files() -> None:
    for n in (".env", "prod.env", "id_rsa", "id_ed25519.pub", "server.pem", "tls.key", ".netrc", "credentials.json"):
        assert is_secret_file(n), n
    for n in ("tokenizer.json", "metrics.json", "model.safetensors", "keys_to_success.txt"):
        assert not is_secret_file(n), n


def test_redact_files() -> None:
    spec = "name: x\n# a comment\nenv:\n  DBPASSWORD: hunter2\n  OMP_NUM_THREADS: '1'\nconfig: {note: ok}\n"
    out = redact_file("spec.yaml", spec.encode())
    assert out is not None and b"hunter2" not in out
    assert yaml.safe_load(out) == {"name": "x", "env": {"DBPASSWORD": MASK, "OMP_NUM_THREADS": "1"},
                                   "config": {"note": "ok"}}
    assert redact_file("spec.yaml", b"name: x\nenv: {OMP_NUM_THREADS: '1'}\n") is None  # untouched: None
    out = redact_file("run.json", json.dumps({"a": {"token": "t0k3n"}, "b": [1, 2]}).encode())
    assert json.loads(out) == {"a": {"token": MASK}, "b": [1, 2]}
    job = f"#!/bin/bash\nexport DBPASSWORD='hunter2'\nexport OMP_NUM_THREADS=1\nexport NOTE={GH}\nexec python -m x\n"
    out = redact_file("job.sh", job.encode()).decode()
    assert "hunter2" not in out and GH not in out and "export OMP_NUM_THREADS=1\n" in out and "exec python" in out
    assert redact_file("stdout-1.log", b"step 1 loss 2.0\n\xff\xfe raw bytes\n") is None
    out = redact_file("stdout-1.log", b"\xff bad utf8 DBPASSWORD=hunter2\n")
    assert out == b"\xff bad utf8 DBPASSWORD=" + MASK.encode() + b"\n"  # other bytes kept exactly
    assert redact_file("model.safetensors", b"DBPASSWORD=hunter2") is None  # not text


def test_redact_lines_streams_pem_blocks() -> None:
    lines = [b"start\n", b"-----BEGIN OPENSSH PRIVATE KEY-----\n", b"b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n",
             b"-----END OPENSSH PRIVATE KEY-----\n", b"password=hunter2\n", b"end\n"]
    out = b"".join(redact_lines(lines))
    assert out == b"start\n" + MASK.encode() + b"\npassword=" + MASK.encode() + b"\nend\n"
