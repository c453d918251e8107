"""`jit-elevator`: the console script. Builds the real WinRM adapter and serves `elevation.approved`."""

from __future__ import annotations

from services.elevator.handler import ROUTING_KEYS, Elevator
from shared.daemon import Runtime, daemon_main
from shared.winrm import MembershipClient, Metered


def build(runtime: Runtime) -> int:
    settings = runtime.settings
    winrm = Metered(MembershipClient(
        operation_timeout_sec=settings.winrm_operation_timeout_seconds,
        read_timeout_sec=settings.winrm_read_timeout_seconds,
        deadline_sec=settings.winrm_deadline_seconds,
        max_shells_per_host=settings.per_host_concurrency,
    ))
    elevator = Elevator(runtime.factory, winrm, settings, runtime.clock)
    try:
        return runtime.serve(ROUTING_KEYS, elevator.process)
    finally:
        winrm.close()  # its pooled shells: a restart must not leak them against the hosts' shell quota


def main() -> None:
    daemon_main("elevator", "Elevates approved requests: adds the account to the task's group over WinRM.", build)


if __name__ == "__main__":
    main()
