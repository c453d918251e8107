"""The one configuration object, built once at start-up from the environment (contract section 2).

`Settings.from_environment()` is what the daemons and jitctl call: it refuses an unknown `JIT_*`
variable (a typo such as `JIT_WROKERS`) and reports every invalid value by the variable's name.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PREFIX = "JIT_"
# JIT_* variables that are not settings: credential variables named by `password_env` (by convention
# JIT_CRED_*), the demo's, the simulator's and the test suite's.
RESERVED_PREFIXES = ("JIT_CRED_", "JIT_DEMO_", "JIT_WINRM_SIM_", "JIT_TEST_", "JIT_LEDGER_EXAMPLES")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class SettingsError(ValueError):
    """The environment is refused; `problems` name each variable (`JIT_WORKERS=abc: ...`)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class Settings(BaseSettings):
    """Every variable is optional; defaults are the embedded single-machine set-up.

    The contract's variables are `JIT_AMQP_URL`, `JIT_DATABASE_URL`, `JIT_EXCHANGE`, `JIT_LOG_FORMAT`
    and `JIT_LOG_LEVEL`; the rest are tuning knobs with safe defaults.
    """

    model_config = SettingsConfigDict(env_prefix="JIT_", extra="ignore", frozen=True)

    amqp_url: str = Field("amqp://guest:guest@localhost:5672/%2F", description="RabbitMQ URL (amqp:// or amqps://); "
                          "the nodes of a cluster: several URLs separated by commas, tried in turn")
    database_url: str = Field("sqlite:///jit.db", description="SQLAlchemy URL: sqlite:///PATH, or "
                              "postgresql+psycopg://user@host/db in production")
    exchange: str = Field("jit.events", description="the durable topic exchange of the contract")
    log_format: Literal["json", "console"] | None = Field(
        None, description="json or console; unset: json unless stderr is a terminal")
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        "info", description="debug, info, warning, error or critical")

    queue_prefix: str = Field("jit", description="daemon queues are `<prefix>.approval`, `.elevator`, `.reaper`")
    prefetch: int = Field(16, ge=1, le=1000, description="unacked deliveries per consumer")
    workers: int = Field(8, ge=1, le=256, description="worker threads per daemon process")
    delivery_limit: int = Field(20, ge=1, description="quorum queue x-delivery-limit before dead-lettering")
    queue_type: Literal["quorum", "classic"] = Field(
        "quorum", description="quorum in production; classic only for throw-away single-node brokers (tests)")
    decision_publishers: str = Field(
        "", description="comma-separated broker users allowed to publish elevation.decided; when set it replaces "
                        "that type's JIT_PUBLISHERS entry (kept for compatibility)")
    publishers: str | None = Field(
        None, description="who may publish each event type: `shipped` (the users of deploy/rabbitmq/definitions.json) "
                          "and/or TYPE=USER[,USER];... (docs/security.md); unset: the daemons refuse to start")
    allow_any_publisher: bool = Field(
        False, description="development only: accept every event from any broker user (no JIT_PUBLISHERS needed)")
    parked_decision_seconds: float = Field(
        300.0, gt=0, description="jit-approval: a decision that arrives before its request is kept this long")
    credential_env_prefix: str = Field(
        "JIT_CRED_", min_length=1, description="`jitctl apply`: a credential provider's password_env must start "
                                               "with this")
    credential_directory: str = Field(
        "/run/secrets", description="`jitctl apply`: a password_file must be under this directory (or "
                                            "start with ${CREDENTIALS_DIRECTORY}/)")
    max_event_bytes: int = Field(64 * 1024, ge=1024, description="larger message bodies are rejected")
    outbox_poll_seconds: float = Field(0.2, gt=0, description="how often the relay looks for unpublished events")

    sweep_interval_seconds: float = Field(
        1.0, gt=0, description="how often the sweepers look for ended windows, due retries and lost elevators")
    expiry_timers: int = Field(
        1000, ge=0, description="jit-reaper: windows ending within two sweep intervals armed as in-process timers, at "
                                "most this many, so each ends at its expires_at (0: the sweep alone ends them)")
    per_host_concurrency: int = Field(5, ge=1, description="WinRM shells in flight per host and process")
    winrm_operation_timeout_seconds: int = Field(20, ge=1, description="WS-Management OperationTimeout of one call")
    winrm_read_timeout_seconds: int = Field(
        30, ge=2, description="HTTP read timeout of one WinRM request (above the operation timeout)")
    winrm_deadline_seconds: float = Field(60.0, gt=0, description="overall deadline of one WinRM operation")
    retry_initial_seconds: float = Field(0.5, gt=0, description="first backoff step (full jitter)")
    retry_max_seconds: float = Field(30.0, gt=0, description="cap of one backoff step, in-process and durable")
    retry_in_process_seconds: float = Field(20.0, ge=0, description="in-process retrying before going durable")
    stall_threshold_seconds: float = Field(300.0, gt=0, description="revocation failing this long is 'stalled'")
    revocation_threads: int = Field(32, ge=1, le=1024, description="reaper threads performing revocations "
                                    "(mostly asleep in backoff while a host is down)")
    lease_seconds: float = Field(
        75.0, gt=0, description="jit-reaper: a claimed revocation stays ours for retry_in_process_seconds plus "
                                "this; keep it above winrm_deadline_seconds + 2 so one last call fits before "
                                "another replica retakes it")
    elevation_retry_seconds: float = Field(
        60.0, ge=0, description="jit-elevator: in-process retrying of a transient WinRM failure before giving up")
    elevation_margin_seconds: float = Field(
        5.0, ge=0, description="jit-elevator: stop retrying this long before the elevation window ends")
    shutdown_grace_seconds: float = Field(
        25.0, gt=0, description="on SIGTERM, how long in-flight messages may take before the daemon exits")
    dead_letter_check_seconds: float = Field(
        60.0, gt=0, description="how often each daemon counts its dead-letter queue (an error line while not empty)")
    reconcile_interval_seconds: float = Field(
        300.0, gt=0, description="jit-reaper: how often the reconciler lists each watched host's group by SID and "
                                 "converges it to the ledger (sooner after an ambiguous outcome)")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="HTTP port of /metrics, /healthz and /readyz on all interfaces (off when "
                                          "unset; 0 picks a free port)")

    @field_validator("log_level", mode="before")
    @classmethod
    def _level(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        return check_database_url(value)

    @field_validator("amqp_url")
    @classmethod
    def _amqp_url(cls, value: str) -> str:
        return check_amqp_url(value)

    @field_validator("publishers")
    @classmethod
    def _publishers(cls, value: str | None) -> str | None:
        from shared.trust import parse_mapping

        if value is not None:
            parse_mapping(value)
        return value

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """The settings of this process; SettingsError names each unknown or invalid JIT_* variable."""
        env = os.environ if environ is None else environ
        problems = unknown_variables(env)
        try:
            settings = cls(**overrides) if environ is None else cls.model_validate(_values(env) | overrides)
        except ValidationError as exc:
            problems += [_describe(err, env) for err in exc.errors()]
            raise SettingsError(problems) from None
        if problems:
            raise SettingsError(problems)
        return settings

    def allowed_publishers(self, event_type: str) -> frozenset[str] | None:
        """Broker users allowed to publish `event_type` (shared/trust.py); None only with allow_any_publisher.

        Without a mapping nobody is allowed: the daemons refuse to start before it matters.
        """
        from shared.trust import parse_mapping

        if self.allow_any_publisher:
            return None
        if event_type == "elevation.decided" and self.decision_publishers.strip():
            return frozenset(u.strip() for u in self.decision_publishers.split(",") if u.strip())
        mapping = parse_mapping(self.publishers) if self.publishers is not None else {}
        return mapping.get(event_type, frozenset())

    def queue(self, daemon: str) -> str:
        return f"{self.queue_prefix}.{daemon}"


def variable(field: str) -> str:
    return PREFIX + field.upper()


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A line for each JIT_* variable that is neither a setting nor reserved, with the likely meant one."""
    known = {variable(f) for f in Settings.model_fields}
    problems = []
    for name in sorted(environ):
        if not name.startswith(PREFIX) or name in known or name.startswith(RESERVED_PREFIXES):
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        hint = f"did you mean {close[0]}" if close else "the settings are listed in README.md"
        problems.append(f"{name} is not a setting ({hint}); name credential variables JIT_CRED_*")
    return problems


def _values(environ: Mapping[str, str]) -> dict[str, str]:
    return {f: environ[variable(f)] for f in Settings.model_fields if variable(f) in environ}


def _describe(err: Any, environ: Mapping[str, str]) -> str:
    field = str(err["loc"][0]) if err["loc"] else "?"
    name = variable(field)
    shown = environ.get(name)
    value = f"={shown!r}" if shown is not None and "url" not in field else ""
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"{name}{value}: {message}"


def check_database_url(url: str) -> str:
    """A SQLAlchemy URL this project can open, or ValueError saying what to write instead."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError("not a database URL; write sqlite:///PATH (e.g. sqlite:///jit.db) or "
                         "postgresql+psycopg://USER@HOST/DB") from None
    if parsed.drivername == "postgresql":
        return url  # the engine reads postgresql:// as postgresql+psycopg://
    try:
        parsed.get_dialect()
    except NoSuchModuleError:
        raise ValueError(f"unknown database driver {parsed.drivername!r}; write postgresql+psycopg://USER@HOST/DB "
                         "or sqlite:///PATH") from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ValueError(f"{parsed.drivername} is not supported; use PostgreSQL (postgresql+psycopg://USER@HOST/DB) "
                         "or SQLite (sqlite:///PATH)")
    if parsed.get_backend_name() == "sqlite" and not parsed.database:
        raise ValueError("the SQLite URL names no file; write sqlite:///PATH (e.g. sqlite:///jit.db)")
    return url


def node_urls(url: str) -> list[str]:
    """The node URLs of an AMQP setting: one URL, or the nodes of one cluster separated by commas."""
    return [node.strip() for node in url.split(",")]


def check_amqp_url(url: str) -> str:
    """An AMQP URL pika can use, or several (one per cluster node); ValueError names the bad one."""
    from shared.logs import hide_password

    nodes = node_urls(url)
    for number, node in enumerate(nodes, 1):
        try:
            _check_node_url(node)
        except ValueError as exc:
            if len(nodes) == 1:
                raise
            raise ValueError(f"node URL {number} of {len(nodes)} ({hide_password(node) or 'empty'}): {exc}") from None
    # One user in one vhost: the trust checks know the process by its one broker user.
    if len({(urlsplit(node).username, urlsplit(node).path) for node in nodes}) > 1:
        raise ValueError("the node URLs name different users or vhosts; the nodes of one cluster are reached as "
                         "one user in one vhost")
    return url


def _check_node_url(url: str) -> None:
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a port that is not a number
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("amqp", "amqps") or not parts.hostname:
        raise ValueError("not a RabbitMQ URL; write amqp://USER:PASSWORD@HOST:5672/VHOST (amqps:// for TLS)")


def missing_sqlite_file(url: str) -> Path | None:
    """The file an SQLite URL names when it does not exist (opening it would create an empty one), else None."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    path = Path(parsed.database)
    return None if path.exists() else path


def settings_table() -> str:
    """The README's settings table, generated from this model (tests/unit/test_settings.py keeps it equal)."""
    lines = ["| variable | meaning | default |", "| --- | --- | --- |"]
    for name, info in Settings.model_fields.items():
        default = "unset" if info.default is None else f"`{info.default}`" if info.default != "" else "empty"
        meaning = (info.description or "").replace("|", "\\|")
        lines.append(f"| `{variable(name)}` | {meaning} | {default} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(settings_table(), end="")
