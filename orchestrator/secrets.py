"""Secrets: recognise them by name and by shape, and mask them wherever orch writes text.

Why one module: provenance (the environment and the command line), failure diagnosis (evidence
lines), the monitor's event log and alerts, preserve (every text file of a bundle, its README
and metadata) and the spec's `env:` validator must agree on what a secret is; three pattern sets
that disagreed let a `DBPASSWORD` through one door and not another.

Names (`is_secret_name`). A name is split into upper-cased components at `_`, `-`, `.`, other
punctuation and camelCase (`apiKey` -> API, KEY; `GHTOKEN` stays one). It is a secret when a
component
  - contains SECRET, PASSWORD, PASSWD, PASSPHRASE or CREDENTIAL (`DBPASSWORD`, `CLIENT_SECRETS`);
  - is or ends with TOKEN or KEY (`HF_TOKEN`, `GHTOKEN`, `WANDB_API_KEY`, `MYKEY`); trailing
    digits are ignored (`TOKEN2`);
  - is AUTH, COOKIE or PWD (`BASIC_AUTH`, `MYSQL_PWD`; the shell's own `PWD`/`OLDPWD` are not);
unless one of these decided false positives applies:
  - English words ending in KEY are not keys: MONKEY, DONKEY, TURKEY, HOCKEY, JOCKEY, WHISKEY,
    LACKEY, HOTKEY, TURNKEY (`_NOT_KEY`);
  - plurals TOKENS/KEYS are counts, not credentials (`max_tokens`, `tokens_per_sec`,
    `TOKENIZERS_PARALLELISM` never matches at all);
  - a component after the secret word that says the value is *about* the secret, not the
    secret (`_ABOUT`): `DB_PASSWORD_FILE` (a path), `key_count`, `token_type_ids`,
    `KeyError`, `SSH_AUTH_SOCK`, `token_budget`;
  - tokenizer special tokens: `eos_token`, `pad_token_id`, `bos_token` (`_TOKENIZER_SPECIAL`),
    and attention's `query_key_value`.
A false positive costs little (a value masked, an env entry dropped from provenance, or a
submit refused with a hint to export the variable in the shell); a false negative leaks.

Values (`looks_like_secret`, `redact`). Masked wherever they appear in text:
  - known token shapes: GitHub `ghp_`/`gho_`/`ghu_`/`ghs_`/`ghr_` and `github_pat_`, GitLab
    `glpat-`, Hugging Face `hf_`, OpenAI/Anthropic `sk-` (mixed case and digits, so a run named
    `sk-learn-baseline-2025...` is not one), Google `AIza`, Slack `xox?-` tokens and
    `hooks.slack.com/services/...` webhook paths, JWTs (`eyJ...eyJ...sig`), AWS access key ids
    `AKIA`/`ASIA` and, in a text holding one, any 40-character base64 word beside it (the
    secret access key), PEM private key blocks;
  - credentials in URLs (`scheme://user:PASSWORD@host`), `Bearer X`, `Authorization: X`;
  - `NAME=value` / `NAME: value` / `"NAME": "value"` where NAME is a secret name (the
    value is kept when it is harmless: empty, null/None/true/false/0/1, `$VAR`/`${VAR}`);
  - long random-looking words: >= 32 characters of [A-Za-z0-9+=_-] with upper case, lower
    case and digits and a Shannon entropy >= 4.0 bits per character. Hex strings (git SHAs,
    sha256 digests, UUIDs: orch writes those itself), lower-case run ids and paths (split at
    `/`) never qualify. A 40-hex-digit W&B key is therefore caught by its name only.
Masked values read `<redacted>`; redaction is idempotent.

Structures: `redact_mapping` (JSON/YAML-like data: a secret-named key's string or integer
value, secret-shaped strings anywhere), `redact_argv` (`--token X`, `--password=X`,
`env.GHTOKEN=X` as `--set` takes it), `secret_env` (which variables of an environment are
secrets, by name or value).

Files (`redact_file`, `redact_stream`, `is_secret_file`): YAML and JSON that may hold a secret
are parsed and masked structurally, other text as text (`export NAME=...` in job.sh, log
lines); large files are streamed in blocks of lines; diffs (`.patch`/`.diff`) in code mode,
which masks token shapes and quoted literals under secret names only, never whole expressions
(the patch stays readable). `is_secret_file` names files never copied at all (`.env`,
`id_rsa`, `*.pem`).

Cost: every rule runs only where a cheap substring test (C speed) says it could match, and
long words are found with bytes.translate; a clean log is masked at about 20-40 MB/s on the CI
machine, a clean JSON file parsed structurally only when it names a secret.
(This module shadows nothing: `import secrets` elsewhere is the standard library.)
"""
from __future__ import annotations

import functools
import json
import math
import re
import string
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

MASK = "<redacted>"

# ------------------------------------------------------------------------------ names
_ANYWHERE = ("SECRET", "PASSWORD", "PASSWD", "PASSPHRASE", "CREDENTIAL")
_SUFFIX = ("TOKEN", "KEY")
_EXACT = {"AUTH", "COOKIE", "PWD"}
_NOT_SECRET = {"PWD", "OLDPWD"}
_NOT_KEY = {"MONKEY", "DONKEY", "TURKEY", "HOCKEY", "JOCKEY", "WHISKEY", "LACKEY", "HOTKEY", "TURNKEY"}
_ABOUT = {"FILE", "FILES", "PATH", "PATHS", "DIR", "DIRECTORY", "COUNT", "COUNTS", "SIZE", "LEN", "LENGTH", "NUM",
          "BITS", "DIM", "TYPE", "TYPES", "NAME", "NAMES", "ERROR", "EXCEPTION", "IDS", "BUDGET", "TTL", "EXPIRY",
          "EXPIRES", "EXPIRATION", "TIMEOUT", "SOCK", "SOCKET", "PADDING", "PROJ", "EMBEDDING", "EMBEDDINGS",
          "INDEX", "IDX", "POS", "POSITION", "ENABLED", "DISABLED", "REQUIRED", "FORMAT", "CMD", "COMMAND",
          "HELPER", "URL", "HEADER", "FIELD", "PREFIX", "LOGITS", "PROBS"}
_TOKENIZER_SPECIAL = {"PAD", "BOS", "EOS", "UNK", "SEP", "CLS", "MASK", "START", "END", "SPECIAL", "ADDITIONAL",
                      "DECODER", "IMAGE", "MIDDLE", "SUFFIX"}
_SPLIT = re.compile(r"[^A-Za-z0-9]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def _components(name: str) -> list[str]:
    return [p.upper() for chunk in _SPLIT.split(name) for p in _CAMEL.split(chunk) if p]


def _secret_word(part: str) -> bool:
    p = part.rstrip("0123456789") or part
    if any(w in p for w in _ANYWHERE) or p in _EXACT:
        return True
    return any(p.endswith(w) for w in _SUFFIX) and p not in _NOT_KEY


@functools.lru_cache(maxsize=4096)
def _is_secret_name(name: str) -> bool:
    if name.upper() in _NOT_SECRET:
        return False
    parts = _components(name)
    for i, part in enumerate(parts):
        if not _secret_word(part):
            continue
        if any(t in _ABOUT for t in parts[i + 1:]):
            continue
        if part.rstrip("0123456789").endswith("TOKEN") and i > 0 and parts[i - 1] in _TOKENIZER_SPECIAL:
            continue
        if part == "KEY" and i > 0 and parts[i - 1] == "QUERY":
            continue  # attention projections (`query_key_value`)
        return True
    return False


def is_secret_name(name: str) -> bool:
    """Whether a variable or key named `name` holds a credential (see the module docstring)."""
    return isinstance(name, str) and _is_secret_name(name)


_HARMLESS = {"", "none", "null", "nil", "~", "true", "false", "yes", "no", "on", "off", "0", "1", MASK.lower(), "***"}


def _harmless(value: str) -> bool:
    v = value.strip().strip("'\"").strip()
    return v.lower() in _HARMLESS or v.startswith("$") or v.startswith("<redacted")


# ------------------------------------------------------------------------------ value shapes
# Each rule runs only when a cheap substring test says it could match (str.find is C-fast; a
# regex tried at every position of a large log is not): a 100 MB log is masked at tens of MB/s.
_SHAPES = re.compile("|".join((
    r"\bgh[pousr]_[A-Za-z0-9]{20,}",
    r"\bgithub_pat_[A-Za-z0-9_]{20,}",
    r"\bglpat-[A-Za-z0-9_-]{20,}",
    r"\bhf_[A-Za-z0-9]{20,}",
    r"\bAIza[0-9A-Za-z_-]{35}",
    r"\bxox[abposr]-[A-Za-z0-9-]{10,}",
    r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*",
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
)))
_SHAPE_HINTS = ("github_pat_", "glpat-", "hf_", "AIza", "xox", "eyJ", "AKIA", "ASIA", "PRIVATE KEY-----")
_GH_HINT = re.compile(r"gh[pousr]_")  # a literal prefix: searched as fast as `in`
_OPENAI = re.compile(r"\bsk-[A-Za-z0-9_-]{20,}")
_AWS_ID = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")
_AWS_SECRET = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
_SLACK_HOOK = re.compile(r"(hooks\.slack\.com/services/)[A-Za-z0-9/_-]+")
_URL_CRED = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)([^\s:/@'\"]+):([^\s@/'\"]+)@")
_BEARER = re.compile(r"(?i)\b(bearer\s+)([A-Za-z0-9._~+/=-]{8,})")
_AUTH_HEADER = re.compile(r"(?i)\b(authorization[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic|token|digest)\s+)?)"
                          r"(?!<redacted)(?!(?:bearer|basic|token|digest)\s)([^\s\"',;]+)")
# `NAME = value`: found from the secret words (lower case) a secret name must contain.
_NAME_HINTS = ("secret", "passw", "passphrase", "credential", "token", "key", "auth", "cookie", "pwd")
_WHOLE_HINTS = {"token", "key", "auth", "cookie", "pwd"}  # must end their component (`tokens`, `tokenizer` do not)
_ID_RUN = re.compile(r"[A-Za-z0-9_.-]*")
_SEP = re.compile(r"[\"']?[ \t]*[=:][ \t]*")
_VALUE = re.compile(r"\"[^\"\n]*\"|'[^'\n]*'|[^\s,;&'\"(){}\[\]<>]+")
_WORD_CHARS = string.ascii_letters + string.digits + "+=_-"
_WORD_MAP = bytes(0x61 if chr(i) in _WORD_CHARS else 0x20 for i in range(256))  # word chars -> "a"
_HEX = re.compile(r"^[0-9a-fA-F-]+$")
ENTROPY_MIN_LEN = 32
ENTROPY_BITS = 4.0


def entropy(s: str) -> float:
    """Shannon entropy in bits per character."""
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values()) if n else 0.0


def _mixed(s: str) -> bool:
    return any(c.isupper() for c in s) and any(c.islower() for c in s) and any(c.isdigit() for c in s)


def high_entropy(word: str) -> bool:
    """A long random-looking word (an unknown API key), never a hex digest, UUID or run id."""
    return (len(word) >= ENTROPY_MIN_LEN and not _HEX.match(word) and _mixed(word)
            and entropy(word) >= ENTROPY_BITS)


def _splice(text: str, edits: list[tuple[int, int, str]]) -> str:
    out, pos = [], 0
    for start, end, new in sorted(edits):
        if start < pos:
            continue
        out += [text[pos:start], new]
        pos = end
    return "".join(out) + text[pos:] if out else text


def _secret_names(text: str, low: str, *, assigned: bool = True) -> Iterator[tuple[int, int]]:
    """(start, end) of each identifier in `text` that is a secret name (each once), found from
    the secret words; with `assigned`, only those followed by `=` or `:` (quotes and blanks
    allowed between)."""
    rev = None
    n = len(text)
    seen: set[int] = set()
    for word in _NAME_HINTS:
        k = low.find(word)
        while k != -1:
            after = k + len(word)
            hit, k = k, low.find(word, after)
            if word in _WHOLE_HINTS and after < n:
                c = text[after]
                if c.isalpha() and (c.islower() or text[hit:after].isupper()):
                    continue  # the component goes on: `tokens_per_sec`, `TOKENIZERS`, `keyboard`
            end = _ID_RUN.match(text, after).end()  # type: ignore[union-attr]
            if end in seen or (assigned and _SEP.match(text, end) is None):
                continue
            seen.add(end)
            if rev is None:
                rev = text[::-1]
            start = n - _ID_RUN.match(rev, n - end).end()  # type: ignore[union-attr]
            if is_secret_name(text[start:end]):
                yield start, end


def _mask_assignments(text: str, low: str, *, code: bool) -> str:
    """Mask the value of every `NAME=value` / `NAME: value` / `"NAME": "value"` whose NAME is a
    secret name. A value is kept when harmless, when it is an expression (`get_password()`),
    and, in code mode, unless it is a quoted literal."""
    n = len(text)
    edits: list[tuple[int, int, str]] = []
    for _, end in _secret_names(text, low):
        v = _VALUE.match(text, _SEP.match(text, end).end())  # type: ignore[union-attr]
        if v is None:
            continue
        value = v.group(0)
        quoted = value[:1] in ("'", '"')
        if _harmless(value) or (code and not quoted):
            continue
        if not quoted and v.end() < n and text[v.end()] in "([.":
            continue  # an expression (`password=get_password()`), not a literal
        edits.append((v.start(), v.end(), f"{value[0]}{MASK}{value[0]}" if quoted else MASK))
    return _splice(text, edits)


def _long_words(text: str) -> set[str]:
    """Maximal runs of >= ENTROPY_MIN_LEN characters of [A-Za-z0-9+=_-] (bytes.translate and
    find run in C: a regex tried at every position of a large log costs 20x more)."""
    raw = text.encode("utf-8", "surrogateescape")
    mapped = raw.translate(_WORD_MAP)
    needle = b"a" * ENTROPY_MIN_LEN
    out: set[str] = set()
    i = mapped.find(needle)
    while i != -1:
        j = mapped.find(b" ", i)
        j = len(mapped) if j == -1 else j
        out.add(raw[i:j].decode("ascii"))
        i = mapped.find(needle, j)
    return out


def _mask_random_words(text: str) -> str:
    for word in sorted((w for w in _long_words(text) if high_entropy(w)), key=len, reverse=True):
        text = text.replace(word, MASK)
    return text


def redact(text: str, *, code: bool = False) -> str:
    """`text` with every secret masked (see the module docstring for what counts).

    `code=True` (diffs, source): token shapes, URL credentials and quoted literals under secret
    names only, no entropy rule (a binary diff is base85) and no bare `name=expression` rule.
    Short texts are memoised: metric names, states and spec values repeat across thousands of
    runs (a report of 10,000 runs redacts a million of them).
    """
    if len(text) <= SHORT and not code:
        return _redact_short(text)
    return _redact(text, code)


SHORT = 256


@functools.lru_cache(maxsize=1 << 16)
def _redact_short(text: str) -> str:
    return _redact(text, False)


def _redact(text: str, code: bool) -> str:
    if len(text) < 15 and not any(c in text for c in "=: "):
        return text  # too short for a token shape, no `name=value`, URL or `Bearer x`
    out = text
    if any(h in text for h in _SHAPE_HINTS) or _GH_HINT.search(text):
        out = _SHAPES.sub(MASK, out)
    if "sk-" in out:
        out = _OPENAI.sub(lambda m: MASK if _mixed(m.group(0)[3:]) else m.group(0), out)
    if ("AKIA" in text or "ASIA" in text) and _AWS_ID.search(text):
        out = _AWS_SECRET.sub(MASK, out)
    if "hooks.slack.com/services/" in out:
        out = _SLACK_HOOK.sub(lambda m: m.group(1) + MASK, out)
    if "://" in out and "@" in out:
        out = _URL_CRED.sub(lambda m: f"{m.group(1)}{m.group(2)}:{MASK}@", out)
    before = out
    low = out.lower()
    if not code and "authorization" in low:
        out = _AUTH_HEADER.sub(lambda m: m.group(1) + MASK, out)
    if "bearer" in low:
        out = _BEARER.sub(lambda m: m.group(1) + MASK, out)
    if any(h in low for h in _NAME_HINTS):
        out = _mask_assignments(out, low if out == before else out.lower(), code=code)
    if not code:
        out = _mask_random_words(out)
    return out


_JSON_STRING = re.compile(r'"[^"\\\n]*(?:\\.[^"\\\n]*)*"')


def redact_jsonl(text: str) -> str:
    """`redact(text)` for JSON lines (metric logs), in the time of its distinct strings: a log of
    thousands of records repeats a dozen keys, and numbers hold no secret (no token shape is all
    digits). Only when a string would be masked, or a key is a secret name (its value, even a
    number, is masked), is the whole text redacted."""
    if "\\" in text:
        strings = set(_JSON_STRING.findall(text))
    else:  # no escapes: the strings are exactly every other piece between quotes (5x faster)
        strings = {f'"{piece}"' for piece in set(text.split('"')[1::2])}
    for quoted in strings:
        if redact(quoted) != quoted or is_secret_name(quoted[1:-1]):
            return redact(text)
    return text


def looks_like_secret(value: str) -> bool:
    """Whether `value` is, or holds, something `redact` would mask."""
    return isinstance(value, str) and redact(value) != value


# ------------------------------------------------------------------------------ structures
def _maskable(v: Any) -> bool:
    if isinstance(v, str):
        return not _harmless(v)
    return isinstance(v, int) and not isinstance(v, bool)


def redact_mapping(obj: Any) -> Any:
    """A copy of a JSON/YAML-like structure with secrets masked: the scalar values of
    secret-named keys (strings and integers; null/booleans/flags kept), and secret-shaped
    strings anywhere (keys included)."""
    if isinstance(obj, Mapping):
        out: dict[Any, Any] = {}
        for k, v in obj.items():
            key = redact(k) if isinstance(k, str) else k
            if isinstance(k, str) and is_secret_name(k):
                if isinstance(v, list):
                    out[key] = [MASK if _maskable(x) else redact_mapping(x) for x in v]
                else:
                    out[key] = MASK if _maskable(v) else redact_mapping(v)
            else:
                out[key] = redact_mapping(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [redact_mapping(v) for v in obj]
    if isinstance(obj, str):
        return redact(obj)
    return obj


def secret_env(env: Mapping[str, str]) -> list[str]:
    """The names in `env` that are secret by name or whose value looks like a secret."""
    return [k for k, v in env.items() if is_secret_name(k) or looks_like_secret(str(v))]


_OPTION = re.compile(r"^-{1,2}([A-Za-z][A-Za-z0-9_.-]*)$")


def redact_argv(argv: Sequence[str]) -> list[str]:
    """A command line with secrets masked: `--token X` (the next word), `--password=X`,
    `env.GHTOKEN=X` (as `--set` takes it), and secret-shaped words anywhere."""
    out: list[str] = []
    mask_next = False
    for arg in argv:
        arg = str(arg)
        if mask_next and not arg.startswith("-"):
            out.append(MASK if not _harmless(arg) else arg)
            mask_next = False
            continue
        mask_next = False
        opt = _OPTION.match(arg)
        if opt:
            mask_next = is_secret_name(opt.group(1))
            out.append(arg)
            continue
        name, eq, value = arg.partition("=")
        if eq and is_secret_name(name.lstrip("-")) and not _harmless(value):
            out.append(f"{name}={MASK}")
            continue
        out.append(redact(arg))
    return out


# ------------------------------------------------------------------------------ files
# Files never copied into a bundle, whatever their folder: credentials and keys.
_SECRET_FILE = re.compile(
    r"(^\.env($|\.)|\.env$|\.pem$|\.key$|\.p12$|\.pfx$|\.jks$|\.keystore$|^id_(rsa|dsa|ecdsa|ed25519)|"
    r"^\.?netrc$|^\.git-credentials$|^credentials(\.json)?$|^\.?pypirc$|^\.?npmrc$|^(hf_)?token$|\.token$|"
    r"secret|password)", re.IGNORECASE)
TEXT_SUFFIXES = {".json", ".jsonl", ".yaml", ".yml", ".sh", ".bash", ".log", ".txt", ".md", ".out", ".err",
                 ".csv", ".tsv", ".cfg", ".ini", ".toml", ".conf", ".py", ".patch", ".diff", ""}
_CODE_SUFFIXES = {".patch", ".diff", ".py"}


def is_secret_file(name: str) -> bool:
    """A file name that is a credential store (never copied)."""
    return bool(_SECRET_FILE.search(name))


def is_text_file(name: str) -> bool:
    """A file `redact_file` looks into (by suffix; files without a suffix too)."""
    return Path(name).suffix.lower() in TEXT_SUFFIXES


def redact_file(name: str, data: bytes) -> bytes | None:
    """The redacted bytes of file `name`, or None when it holds no secret (or is not text).

    YAML/JSON that may hold a secret are parsed and masked structurally (then written back, as
    JSON with indent 2 or YAML in key order; comments are lost only in a file that held a
    secret); other text files, and YAML/JSON the structural pass finds clean or cannot parse,
    are masked as text. Invalid UTF-8 bytes are kept as they were.
    """
    suffix = Path(name).suffix.lower()
    if suffix not in TEXT_SUFFIXES or b"\0" in data[:8192]:
        return None
    text = data.decode("utf-8", "surrogateescape")
    clean_text = redact(text, code=suffix in _CODE_SUFFIXES)
    structured = suffix in (".json", ".yaml", ".yml")
    if structured and (clean_text != text or next(_secret_names(text, text.lower()), None) is not None):
        try:
            if suffix == ".json":
                obj = json.loads(text)
            else:
                import yaml

                obj = yaml.safe_load(text)
        except Exception:  # noqa: BLE001 - not parsable: masked as text below
            pass
        else:
            clean = redact_mapping(obj) if isinstance(obj, (dict, list)) else obj
            if clean != obj:
                if suffix == ".json":
                    return (json.dumps(clean, indent=2, ensure_ascii=False) + "\n").encode()
                import yaml

                return yaml.safe_dump(clean, sort_keys=False, allow_unicode=True).encode()
    return None if clean_text == text else clean_text.encode("utf-8", "surrogateescape")


_PEM_BEGIN = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
_PEM_END = re.compile(r"-----END [A-Z0-9 ]*PRIVATE KEY-----")


def redact_lines(lines: Iterable[bytes], *, code: bool = False, block: int = 1 << 20) -> Iterator[bytes]:
    """Mask a large text file given line by line, in blocks of about `block` bytes; a PEM key
    block spanning lines (and blocks) becomes one MASK line."""
    buf: list[str] = []
    size = 0
    in_key = False

    def flush() -> Iterator[bytes]:
        nonlocal size
        if buf:
            yield redact("".join(buf), code=code).encode("utf-8", "surrogateescape")
            buf.clear()
            size = 0

    for raw in lines:
        line = raw.decode("utf-8", "surrogateescape")
        if in_key or "PRIVATE KEY-----" in line:
            if in_key:
                end = _PEM_END.search(line)
                if end is None:
                    continue
                in_key = False
                line = line[end.end():]
                if not line.strip():
                    continue
            else:
                begin = _PEM_BEGIN.search(line)
                if begin and not _PEM_END.search(line, begin.end()):
                    yield from flush()
                    in_key = True
                    yield (redact(line[:begin.start()], code=code) + MASK + "\n").encode("utf-8", "surrogateescape")
                    continue
        buf.append(line)
        size += len(line)
        if size >= block:
            yield from flush()
    yield from flush()


def redact_stream(path: Path) -> Iterator[bytes]:
    """The redacted content of a (large) text file, in line-sized pieces."""
    with open(path, "rb") as fh:
        yield from redact_lines(fh, code=path.suffix.lower() in _CODE_SUFFIXES)
