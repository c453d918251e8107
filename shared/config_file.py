"""The operator's declarative configuration (contract section 5): YAML, validated whole before anything is written.

`load_config(text)` returns a `ConfigFile` or raises `ConfigError` whose lines each name the rule
and the item that breaks it (unknown keys are named too). `shared.db.config_apply` writes it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.hosts import canonical_host
from shared.rules import KNOWN_PERMISSIONS
from shared.sids import name_refusal
from shared.winrm.errors import InvalidNameError
from shared.winrm.names import member_name, validate_group, validate_member

Id = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@\-]*$")


class ConfigError(ValueError):
    """The file is refused whole; `problems` lists every rule broken, each naming its item."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("configuration refused:\n" + "\n".join(f"  - {p}" for p in problems))
        self.problems = problems


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class UserSpec(Strict):
    id: str = Id
    kind: Literal["internal", "vendor_rep"]
    permissions: list[str] = []
    # The RabbitMQ user this person decides, revokes and asks with (jitctl with their own credentials).
    broker_user: str | None = Field(None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@:\-]*$")

    @field_validator("permissions")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = [p for p in value if p not in KNOWN_PERMISSIONS]
        if unknown:
            known = ", ".join(sorted(KNOWN_PERMISSIONS))
            raise ValueError(f"unknown permission(s) {', '.join(unknown)}; known: {known}")
        return value


class ProviderSpec(Strict):
    id: str = Id
    username: str = Field(min_length=1, max_length=256)
    password_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    password_file: str | None = Field(None, min_length=1, max_length=1024)

    @model_validator(mode="after")
    def _has_source(self) -> ProviderSpec:
        if not self.password_env and not self.password_file:
            raise ValueError(f"credential provider {self.id} needs password_env or password_file")
        return self


class WinRMSpec(Strict):
    scheme: Literal["http", "https"] = "https"
    port: int | None = Field(None, ge=1, le=65535)
    transport: Literal["ntlm", "basic"] = "ntlm"
    verify_tls: bool = True
    ca_file: str | None = Field(None, min_length=1, max_length=1024)
    # Basic sends the password base64-encoded: only over HTTPS, unless a lab says so explicitly.
    allow_unencrypted_basic: bool = False

    @model_validator(mode="after")
    def _safe(self) -> WinRMSpec:
        if self.transport == "basic" and self.scheme == "http" and not self.allow_unencrypted_basic:
            raise ValueError("Basic authentication over plain http is refused (Basic over HTTPS only); "
                             "set allow_unencrypted_basic: true only for a lab or the demo")
        if self.ca_file and self.scheme != "https":
            raise ValueError("ca_file needs scheme https")
        return self

    @property
    def effective_port(self) -> int:
        return self.port or (5986 if self.scheme == "https" else 5985)


class HostSpec(Strict):
    address: str = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9.:\-\[\]_]+$")
    winrm: WinRMSpec | None = None

    @field_validator("address")
    @classmethod
    def _canonical(cls, value: str) -> str:
        # Host names are case-insensitive: one canonical form is stored and compared (shared.hosts).
        return canonical_host(value)


class ApplicationSpec(Strict):
    id: str = Id
    hosts: list[HostSpec] = []


class SecretSpec(Strict):
    id: str = Id
    account: str = Field(min_length=1, max_length=256)
    domain: str | None = None
    application: str = Id
    credential_provider: str = Id
    checkout_enabled: bool

    @model_validator(mode="after")
    def _valid_member(self) -> SecretSpec:
        refusal = name_refusal(self.account, self.domain)
        if refusal is not None:
            raise ValueError(f"{refusal} (rule: a secret's account must be a user account, "
                             "never a group or a well-known principal)")
        member = member_name(self.account, self.domain)
        try:
            validate_member(member)
        except InvalidNameError as exc:
            raise ValueError(f"account {member!r} of secret {self.id}: {exc}") from None
        return self


class TaskSpec(Strict):
    id: str = Id
    group: str
    approval: Literal["required", "not_required"]
    approval_window_seconds: int = Field(gt=0, le=366 * 24 * 3600)
    removal_policy: Literal["on_secret_check_in"] = "on_secret_check_in"
    on_revoke: Literal["report", "logoff"] = "report"
    # What the reconciler does with a member of the task's group that no grant explains.
    drift: Literal["report", "remove"] = "report"
    # Distinct approvers a request (and an extension) needs; the requester never counts. What a denial does:
    # any = one denial denies; majority = denials from more than half of approvals_required deny.
    approvals_required: int = Field(1, ge=1, le=20)
    deny: Literal["any", "majority"] = "any"
    # A request nobody decides is cancelled (reason decision_timeout) this long after it arrived.
    decision_timeout_seconds: int | None = Field(None, gt=0, le=366 * 24 * 3600)
    # What an extension of an active elevation needs, and the longest window any elevation of the task may
    # reach, counted from its approval (the checkout's end bounds it always).
    extension: Literal["refused", "automatic", "approval"] = "refused"
    extension_max_total_seconds: int | None = Field(None, gt=0, le=366 * 24 * 3600)
    secrets: list[str] = []

    @model_validator(mode="after")
    def _approvals(self) -> TaskSpec:
        if self.approvals_required > 1 and self.approval == "not_required":
            raise ValueError(f"task {self.id}: approvals_required {self.approvals_required} needs approval: required")
        return self

    @field_validator("group")
    @classmethod
    def _group(cls, value: str) -> str:
        try:
            validate_group(value)
        except InvalidNameError as exc:
            raise ValueError(f"group must be a SID (S-1-5-...) or a valid local group name: {exc}") from None
        return value


class ConfigFile(Strict):
    users: list[UserSpec] = []
    credential_providers: list[ProviderSpec] = []
    applications: list[ApplicationSpec] = []
    secrets: list[SecretSpec] = []
    tasks: list[TaskSpec] = []


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML where a key given twice in one mapping is an error, not "the last one wins" (a second
    `users: []` appended to a file would otherwise silently remove every user)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (lines {seen[key]} and {line}); "
                    "write it once", key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_config(text: str) -> ConfigFile:
    """Parse and validate a configuration file's text; raise ConfigError naming every problem."""
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"]) from None
    if raw is None or raw == {}:
        raise ConfigError(["the file is empty (or only comments): nothing to apply. A file lists users, "
                           "credential_providers, applications, secrets and tasks (deploy/sample-config.yaml)"])
    if not isinstance(raw, dict):
        raise ConfigError(["the file must be a mapping with users, credential_providers, applications, secrets, tasks"])
    try:
        config = ConfigFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError([_describe(raw, err) for err in exc.errors()]) from None
    problems = cross_check(config)
    if problems:
        raise ConfigError(problems)
    return config


def _describe(raw: dict[str, Any], err: Any) -> str:
    """`tasks[0] (jit-web-admins).secrets: ...`: the path, with the item's id where there is one."""
    extra = err["type"] == "extra_forbidden"
    loc = err["loc"][:-1] if extra else err["loc"]
    where = ""
    node: Any = raw
    for part in loc:
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and part < len(node) else None
            ident = node.get("id") or node.get("address") if isinstance(node, dict) else None
            where += f"[{part}]" + (f" ({ident})" if ident else "")
        else:
            where += ("." if where else "") + str(part)
            node = node.get(part) if isinstance(node, dict) else None
    if extra:
        return f"{where or 'top level'}: unknown key {err['loc'][-1]!r}"
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}"


def _duplicates(kind: str, ids: list[str]) -> list[str]:
    return [f"duplicate {kind} id {i!r}" for i, n in Counter(ids).items() if n > 1]


def cross_check(config: ConfigFile) -> list[str]:
    """The rules across items: unique ids, known references, one task per secret, checkout, WinRM."""
    problems = _duplicates("user", [u.id for u in config.users])
    problems += [f"broker_user {b!r} belongs to more than one user; one person per broker user" for b, n
                 in Counter(u.broker_user for u in config.users if u.broker_user).items() if n > 1]
    problems += _duplicates("credential provider", [p.id for p in config.credential_providers])
    problems += _duplicates("application", [a.id for a in config.applications])
    problems += _duplicates("secret", [s.id for s in config.secrets])
    problems += _duplicates("task", [t.id for t in config.tasks])
    for app in config.applications:
        addresses = [canonical_host(h.address) for h in app.hosts]
        problems += [f"application {app.id}: host {a} listed twice (host names compare without case and "
                     "trailing dot)" for a, n in Counter(addresses).items() if n > 1]
        problems += [f"host {h.address} of application {app.id} has no WinRM configuration (winrm: ...)"
                     for h in app.hosts if h.winrm is None]
    apps = {a.id for a in config.applications}
    providers = {p.id for p in config.credential_providers}
    secrets = {s.id: s for s in config.secrets}
    for secret in config.secrets:
        if secret.application not in apps:
            problems.append(f"secret {secret.id}: unknown application {secret.application!r}")
        if secret.credential_provider not in providers:
            problems.append(f"secret {secret.id}: unknown credential provider {secret.credential_provider!r}")
    owner: dict[str, str] = {}
    for task in config.tasks:
        for sid in task.secrets:
            if sid not in secrets:
                problems.append(f"task {task.id}: unknown secret {sid!r}")
                continue
            if owner.get(sid) == task.id:
                problems.append(f"task {task.id}: secret {sid} listed twice")
                continue
            if sid in owner:
                problems.append(f"secret {sid} is in two tasks ({owner[sid]} and {task.id}); a secret may be in one")
                continue
            owner[sid] = task.id
            if not secrets[sid].checkout_enabled:
                problems.append(f"task {task.id}: secret {sid} does not have checkout enabled (checkout_enabled: true)")
    return problems
