"""The one configuration object, built once at start-up from the environment (contract section 2)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every variable is optional; defaults are the embedded single-machine set-up.

    The contract's variables are `JIT_AMQP_URL`, `JIT_DATABASE_URL`, `JIT_EXCHANGE`, `JIT_LOG_FORMAT`
    and `JIT_LOG_LEVEL`; the rest are tuning knobs with safe defaults.
    """

    model_config = SettingsConfigDict(env_prefix="JIT_", extra="ignore", frozen=True)

    amqp_url: str = "amqp://guest:guest@localhost:5672/%2F"
    database_url: str = "sqlite:///jit.db"
    exchange: str = "jit.events"
    log_format: Literal["json", "console"] | None = None
    log_level: str = "info"

    queue_prefix: str = Field("jit", description="daemon queues are <prefix>.approval, .elevator, .reaper")
    prefetch: int = Field(16, ge=1, le=1000, description="unacked deliveries per consumer")
    workers: int = Field(8, ge=1, le=256, description="worker threads per daemon process")
    delivery_limit: int = Field(20, ge=1, description="quorum queue x-delivery-limit before dead-lettering")
    queue_type: Literal["quorum", "classic"] = Field(
        "quorum", description="quorum in production; classic only for throw-away single-node brokers (tests)")
    decision_publishers: str = Field(
        "", description="comma-separated broker users allowed to publish elevation.decided (empty: any user); "
                        "the broker vouches for the publishing user, so a decision can't come from elsewhere")
    max_event_bytes: int = Field(64 * 1024, ge=1024, description="larger message bodies are rejected")
    outbox_poll_seconds: float = Field(0.2, gt=0, description="how often the relay looks for unpublished events")

    sweep_interval_seconds: float = Field(1.0, gt=0)
    per_host_concurrency: int = Field(5, ge=1, description="WinRM shells in flight per host and process")
    winrm_operation_timeout_seconds: int = Field(20, ge=1)
    winrm_read_timeout_seconds: int = Field(30, ge=2)
    winrm_deadline_seconds: float = Field(60.0, gt=0, description="overall deadline of one WinRM operation")
    retry_initial_seconds: float = Field(0.5, gt=0)
    retry_max_seconds: float = Field(30.0, gt=0, description="cap of one backoff step, in-process and durable")
    retry_in_process_seconds: float = Field(20.0, ge=0, description="in-process retrying before going durable")
    stall_threshold_seconds: float = Field(300.0, gt=0, description="revocation failing this long is 'stalled'")
    revocation_threads: int = Field(32, ge=1, le=1024, description="reaper threads performing revocations "
                                    "(mostly asleep in backoff while a host is down)")
    lease_seconds: float = Field(
        75.0, gt=0, description="a claimed row stays ours this long past its retry budget; keep it above "
                                "winrm_deadline_seconds so one last attempt fits before another replica retakes it")
    elevation_retry_seconds: float = Field(
        60.0, ge=0, description="jit-elevator: in-process retrying of a transient WinRM failure before giving up")
    elevation_margin_seconds: float = Field(
        5.0, ge=0, description="jit-elevator: stop retrying this long before the elevation window ends")
    shutdown_grace_seconds: float = Field(25.0, gt=0)
    dead_letter_check_seconds: float = Field(
        60.0, gt=0, description="how often each daemon counts its dead-letter queue (an error line while not empty)")
    reconcile_interval_seconds: float = Field(
        300.0, gt=0, description="jit-reaper: how often the reconciler lists each watched host's group by SID and "
                                 "converges it to the ledger (sooner after an ambiguous outcome)")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="HTTP port of /metrics, /healthz and /readyz on all interfaces (off when "
                                          "unset; 0 picks a free port)")

    def allowed_publishers(self, event_type: str) -> frozenset[str] | None:
        """Broker users allowed to publish `event_type`, or None when any user may."""
        if event_type == "elevation.decided" and self.decision_publishers.strip():
            return frozenset(u.strip() for u in self.decision_publishers.split(",") if u.strip())
        return None

    def queue(self, daemon: str) -> str:
        return f"{self.queue_prefix}.{daemon}"
