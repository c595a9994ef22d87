"""The user's cluster profile: site settings that do not belong in every experiment spec.

Partition, account, QoS, module loads and the preemption signal are facts about *a cluster*,
not about an experiment, so they live in one user-level file, `~/.config/orch/cluster.yaml`
(or the file named by `ORCH_CLUSTER`; `$XDG_CONFIG_HOME` is honoured). A spec's own
`resources` values override the profile. A missing file is an empty profile.

    # ~/.config/orch/cluster.yaml
    partition: gpu
    account: my-lab
    qos: normal
    setup: ["module load cuda/12.4", "source ~/venvs/orch/bin/activate"]
    sbatch: ["--gres-flags=enforce-binding"]
    template: ~/orch/my_template.sh.tmpl
    python: /home/me/venvs/orch/bin/python   # the interpreter jobs use (default: this one)
    signal: USR1
    signal_grace: 120
    max_array_size: 1001      # default: read from `scontrol show config` (cached)
    query_interval: 10        # seconds between scheduler queries, shared by all orch processes
    report_dir: ~/public_html/orch   # `orch monitor` rewrites this static report after every pass
    umask: "0002"             # shared project folders: files 0664, folders 0775 (group members read and write)
    hf_home: /shared/hf-cache # the Hugging Face cache jobs read (default: the submitting side's HF_HOME)
    online: false             # true: compute nodes reach the hub (jobs then run without HF_*_OFFLINE)
    gpu_mem: 80G              # `orch plan`: memory of one GPU of this cluster (default: 80G)

`umask` (quoted octal) is applied by every orch command that writes into the results tree and,
through a `umask` line in job.sh, by every job on either backend, whatever the umask of the shell
that submitted it; without it, files follow the process umask (0644 under 022, 0600 under 077).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from orchestrator.errors import SpecError, SpecErrors


class ClusterProfile(BaseModel):
    """Site defaults for the SLURM backend; every field is optional."""

    model_config = ConfigDict(extra="forbid")

    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    setup: list[str] = Field(default_factory=list, description="shell lines before every job (module load, conda activate)")
    sbatch: list[str] = Field(default_factory=list, description="extra sbatch options for every job")
    template: Optional[str] = Field(None, description="path of a template used instead of orch's")
    python: Optional[str] = Field(None, description="python executable on the compute nodes")
    signal: Optional[str] = None
    signal_grace: Optional[int] = Field(None, ge=1)
    max_array_size: Optional[int] = Field(None, ge=1, description="override the cluster's MaxArraySize")
    query_interval: float = Field(5.0, ge=0, description="minimum seconds between squeue/sacct calls")
    cache_dir: Optional[str] = Field(None, description="where the shared query cache lives")
    report_dir: Optional[str] = Field(None, description="`orch monitor` rewrites this static HTML report after every pass")
    umask: Optional[str] = Field(None, description="quoted octal umask for orch and its jobs, e.g. \"0002\" for "
                                 "group-shared project folders (files 0664, folders 0775)")
    hf_home: Optional[str] = Field(None, description="the shared Hugging Face cache (HF_HOME) prefetch fills and jobs read")
    online: bool = Field(False, description="compute nodes reach the Hugging Face hub (else jobs run offline)")
    gpu_mem: Optional[str] = Field(None, description="`orch plan`: memory of one GPU, e.g. 80G (default 80G)")

    @field_validator("signal")
    @classmethod
    def _signal(cls, v: Optional[str]) -> Optional[str]:
        if v is None:
            return v
        name = v.upper().removeprefix("SIG")
        if name not in {"USR1", "USR2", "TERM", "INT", "HUP", "URG", "CONT"}:
            raise ValueError(f"unsupported signal {v!r}: use USR1, USR2, TERM, INT or HUP")
        return name

    @field_validator("umask", mode="before")
    @classmethod
    def _umask(cls, v: Any) -> Optional[str]:
        if v is None:
            return v
        if not isinstance(v, str):  # YAML reads 0002 as 2 and 022 as 18: the digits are lost
            raise ValueError(f"write the umask as a quoted octal string, e.g. umask: \"0002\" (got {v!r})")
        digits = v.strip().lower().removeprefix("0o")
        if not digits or len(digits) > 4 or any(c not in "01234567" for c in digits):
            raise ValueError(f"{v!r} is not an octal umask such as \"0002\", \"0022\" or \"0077\"")
        return f"{int(digits, 8):04o}"

    @property
    def umask_bits(self) -> Optional[int]:
        return int(self.umask, 8) if self.umask else None

    @field_validator("gpu_mem")
    @classmethod
    def _mem(cls, v: Optional[str]) -> Optional[str]:
        if v is not None:
            from orchestrator.spec.sections import parse_mem

            parse_mem(v)
        return v

    @field_validator("template", "cache_dir", "python", "report_dir", "hf_home")
    @classmethod
    def _expand(cls, v: Optional[str]) -> Optional[str]:
        return os.path.expanduser(v) if v else v


def profile_path() -> Path:
    """`$ORCH_CLUSTER`, else `$XDG_CONFIG_HOME/orch/cluster.yaml` (default ~/.config)."""
    explicit = os.environ.get("ORCH_CLUSTER")
    if explicit:
        return Path(os.path.expanduser(explicit))
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "orch" / "cluster.yaml"


def apply_umask(profile: Optional[ClusterProfile] = None) -> Optional[int]:
    """Set this process's umask to the profile's `umask` (when it has one); the mask applied or None."""
    from orchestrator.record.atomicio import set_umask

    mask = (profile or load_profile()).umask_bits
    if mask is not None:
        set_umask(mask)
    return mask


def umask_line(profile: ClusterProfile) -> list[str]:
    """The job script's `umask` line for the profile's setting (none without one)."""
    return [f"umask {profile.umask}"] if profile.umask else []


def load_profile(path: Optional[Path] = None) -> ClusterProfile:
    """Read the profile; errors name the file and key, like spec errors (exit code 2)."""
    import yaml

    path = path or profile_path()
    if not path.exists():
        if os.environ.get("ORCH_CLUSTER"):
            raise SpecError(f"cluster profile not found (ORCH_CLUSTER={os.environ['ORCH_CLUSTER']})", file=str(path))
        return ClusterProfile()
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise SpecError(f"not valid YAML: {exc}", file=str(path))
    if not isinstance(data, dict):
        raise SpecError("expected a mapping of settings", file=str(path))
    try:
        return ClusterProfile.model_validate(data)
    except ValidationError as exc:
        errors = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or None
            if err["type"] == "extra_forbidden":
                known = ", ".join(ClusterProfile.model_fields)
                errors.append(SpecError("unknown key", file=str(path), key=key, hint=f"known keys: {known}"))
            else:
                errors.append(SpecError(err["msg"].removeprefix("Value error, "), file=str(path), key=key))
        raise SpecErrors(errors)
