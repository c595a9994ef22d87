"""The RO-Crate 1.1 metadata of a preserved bundle: what was run, with which code, data and
parameters, and what it produced.

Why: a bundle should be findable and understood by research-data tools (RO-Crate viewers,
repositories such as WorkflowHub or Zenodo ingest), not only by orch. The crate follows RO-Crate's
advice for bags: its root is the bag's payload folder, so the metadata file is
`data/ro-crate-metadata.json` and every `@id` is a path relative to `data/`. Both the `bagit` and
the `rocrate` libraries read the bundle as it is (`bagit.Bag(bundle)`, `ROCrate(bundle / "data")`).

The graph, in the spirit of the Process Run Crate profile:
  - the root Dataset `./` (the run: name, description, run id as identifier, the creation date)
    `hasPart` every payload file (File entities with size and media type) and one Dataset per
    kept checkpoint folder, and `mentions` the run's CreateAction;
  - the CreateAction `#run`: `instrument` the trainer (a SoftwareApplication, version = the git
    commit from provenance.json, based on the SoftwareSourceCode `#source-code`), `object` the
    spec, the uncommitted git patch, the training data (`#data`) and every configuration value
    (PropertyValue `#param-<key>`), `result` the run's outputs (eval/, plots/, logs/, tokenizer/
    files and the checkpoint Datasets), start/end time and status from run.json.
It is a function of the run's files only (no clock), so re-preserving an unchanged run writes the
same crate. It passes through `orchestrator.secrets` like every generated file (the spec's values
are already masked by the README's configuration table it shares).
"""
from __future__ import annotations

import json
import mimetypes
from typing import Any, Iterable, Mapping
from urllib.parse import quote, unquote, urlsplit

from orchestrator.secrets import redact, redact_argv, redact_mapping

METADATA = "ro-crate-metadata.json"
CONTEXT = "https://w3id.org/ro/crate/1.1/context"
CONFORMS = "https://w3id.org/ro/crate/1.1"
_STATUS = {"COMPLETED": "CompletedActionStatus", "FAILED": "FailedActionStatus", "CANCELLED": "FailedActionStatus",
           "RUNNING": "ActiveActionStatus", "STALLED": "ActiveActionStatus", "PENDING": "PotentialActionStatus",
           "QUEUED": "PotentialActionStatus"}
_RESULTS = ("eval/", "plots/", "logs/", "tokenizer/")


def _ref(rel: str) -> dict[str, str]:
    return {"@id": quote(rel, safe="/")}


def build(d: Any, files: Mapping[str, int | None], roles: Mapping[str, str], *, spec_rows: Iterable[tuple[str, Any]]) -> bytes:
    """The crate of run `d` (analysis.rundata.RunData) whose bundle holds `files` (payload-relative
    path -> size, None when unknown before copying); `roles` maps checkpoint roles to folders under
    ckpt/; `spec_rows` are the (key, value) configuration rows (already redacted)."""
    rec, prov = d.record, d.provenance
    git = prov.get("git") if isinstance(prov.get("git"), Mapping) else {}
    trainer = str(d.spec.get("trainer") or "unknown")
    commit = str(git.get("commit") or "")
    created = str(rec.get("created_at") or "")
    graph: list[dict[str, Any]] = [
        {"@id": METADATA, "@type": "CreativeWork", "conformsTo": {"@id": CONFORMS}, "about": {"@id": "./"}},
    ]
    ckpt_sets: dict[str, list[str]] = {}
    for rel in files:
        parts = rel.split("/")
        if parts[0] == "ckpt" and len(parts) > 2:
            ckpt_sets.setdefault(f"ckpt/{parts[1]}/", []).append(rel)
    role_of = {f"ckpt/{folder}/": role for role, folder in roles.items()}
    parts_of_root = [_ref(rel) for rel in sorted(files) if not any(rel.startswith(s) for s in ckpt_sets)]
    parts_of_root += [_ref(s) for s in sorted(ckpt_sets)]
    root = {"@id": "./", "@type": "Dataset", "name": f"{d.name}: run {d.run_id}",
            "description": str(d.spec.get("description") or f"A run of the {trainer} trainer, preserved by orch."),
            "identifier": d.run_id, "hasPart": parts_of_root, "mentions": {"@id": "#run"}}
    if created:
        root["datePublished"] = created
    graph.append(root)

    params = [(str(k), v) for k, v in spec_rows if k not in ("name", "description", "trainer")]  # said above
    inputs = [_ref(rel) for rel in ("spec.yaml", "provenance.patch") if rel in files]
    data_section = d.spec.get("data")
    if isinstance(data_section, Mapping) and data_section:
        inputs.append({"@id": "#data"})
        desc = ", ".join(f"{k}={v}" for k, v in redact_mapping(dict(data_section)).items())
        graph.append({"@id": "#data", "@type": "Dataset", "name": "training and evaluation data",
                      "description": f"the spec's data section: {desc}"})
    inputs += [{"@id": f"#param-{quote(k, safe='')}"} for k, _ in params]
    outputs = [_ref(rel) for rel in sorted(files) if rel.startswith(_RESULTS)] + [_ref(s) for s in sorted(ckpt_sets)]
    action: dict[str, Any] = {"@id": "#run", "@type": "CreateAction", "name": f"orch run {d.run_id}",
                              "instrument": {"@id": "#trainer"}, "object": inputs, "result": outputs,
                              "actionStatus": {"@id": f"http://schema.org/{_STATUS.get(d.state, 'FailedActionStatus')}"}}
    attempts = [a for a in rec.get("attempts") or [] if isinstance(a, Mapping)]
    start = next((a.get("started_at") for a in attempts if a.get("started_at")), None) or created
    if start:
        action["startTime"] = str(start)
    if rec.get("ended_at"):
        action["endTime"] = str(rec["ended_at"])
    failure = rec.get("failure")
    if isinstance(failure, Mapping) and failure.get("class"):
        action["error"] = f"failure class {failure['class']}: {failure.get('summary') or ''}".strip(": ")
    command = prov.get("command")
    if isinstance(command, list) and command:
        action["description"] = "submitted with: " + " ".join(redact_argv([str(c) for c in command]))
    graph.append(action)
    app: dict[str, Any] = {"@id": "#trainer", "@type": "SoftwareApplication", "name": f"orch trainer {trainer}",
                           "isBasedOn": {"@id": "#source-code"}}
    source: dict[str, Any] = {"@id": "#source-code", "@type": "SoftwareSourceCode", "name": "the code that ran",
                              "programmingLanguage": "Python"}
    if commit:
        app["softwareVersion"] = source["version"] = commit
        source["description"] = f"git commit {commit}" + (
            " with uncommitted changes (provenance.patch)" if git.get("dirty") else "")
    if git.get("branch"):
        source["alternateName"] = f"branch {git['branch']}"
    graph += [app, source]
    graph += [{"@id": f"#param-{quote(k, safe='')}", "@type": "PropertyValue", "name": k,
               "value": v if isinstance(v, (int, float, bool, str)) else json.dumps(v, default=str)}
              for k, v in params]
    for s, members in sorted(ckpt_sets.items()):
        role = role_of.get(s)
        graph.append({"@id": quote(s, safe="/"), "@type": "Dataset",
                      "name": f"checkpoint {s[len('ckpt/'):-1]}" + (f" ({role})" if role else ""),
                      "hasPart": [_ref(rel) for rel in sorted(members)]})
    for rel in sorted(files):
        entity: dict[str, Any] = {**_ref(rel), "@type": "File", "name": rel.rsplit("/", 1)[-1]}
        if files[rel] is not None:
            entity["contentSize"] = str(files[rel])
        kind = mimetypes.guess_type(rel, strict=False)[0] or _MEDIA.get(rel.rsplit(".", 1)[-1])
        if kind:
            entity["encodingFormat"] = kind
        graph.append(entity)
    crate = redact_mapping({"@context": CONTEXT, "@graph": graph})
    return redact(json.dumps(crate, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


_MEDIA = {"jsonl": "application/x-ndjson", "yaml": "application/yaml", "log": "text/plain",
          "safetensors": "application/octet-stream", "bin": "application/octet-stream", "md": "text/markdown",
          "patch": "text/x-diff"}


def check(raw: bytes, files: set[str], folders: set[str]) -> list[str]:
    """Problems of a crate whose payload holds `files` and `folders` (payload-relative): it must
    parse as RO-Crate JSON-LD, and every File or Dataset it names by a relative path must exist."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return [f"not JSON ({exc})"]
    graph = doc.get("@graph") if isinstance(doc, dict) else None
    if not isinstance(graph, list) or not all(isinstance(e, dict) and "@id" in e for e in graph):
        return ["no @graph of entities with @id"]
    by_id = {str(e["@id"]): e for e in graph}
    problems = []
    about = (by_id.get(METADATA) or {}).get("about")
    root_id = about.get("@id") if isinstance(about, dict) else None
    if root_id is None:
        problems.append(f"no metadata descriptor ({METADATA} about the root)")
    elif "Dataset" not in _types(by_id.get(root_id, {})):
        problems.append(f"the root {root_id!r} is not a Dataset")
    for ident, entity in sorted(by_id.items()):
        types = _types(entity)
        if ident in (METADATA, root_id) or not ({"File", "Dataset"} & types) or not _local(ident):
            continue
        path = unquote(ident)
        if "File" in types and path not in files:
            problems.append(f"names the file {path}, which is not in the bundle")
        elif "File" not in types and path.rstrip("/") not in folders:
            problems.append(f"names the folder {path}, which is not in the bundle")
    return problems


def _types(entity: Mapping[str, Any]) -> set[str]:
    t = entity.get("@type")
    return {t} if isinstance(t, str) else {str(x) for x in t} if isinstance(t, list) else set()


def _local(ident: str) -> bool:
    """A path inside the crate (not `#local`, not a URL, not absolute)."""
    return not (ident.startswith(("#", "/")) or urlsplit(ident).scheme)
