"""jit-reaper: the composition root. Consumes `<prefix>.reaper`, sweeps, and revokes over WinRM."""

from __future__ import annotations

from services.reaper.handlers import ROUTING_KEYS, make_process
from services.reaper.pool import RevocationPool
from services.reaper.reconciler import Reconciler
from services.reaper.revocation import Revoker
from services.reaper.sweeper import Sweeper
from services.reaper.timers import ExpiryTimers
from shared.daemon import Periodic, Runtime, daemon_main
from shared.settings import Settings
from shared.winrm import MembershipClient, Metered, WinRMPort

# After the consumer's own drain: what is still on the wire after this is left to lease expiry,
# so that SIGTERM exits within the contract's 30 s.
POOL_GRACE_SECONDS = 5.0
DESCRIPTION = ("Ends elevations: on check-in, expiry or an operator's request, removes the account from the "
               "group on the host and retries until the host confirms.")


def winrm_port(s: Settings) -> Metered:
    return Metered(MembershipClient(operation_timeout_sec=s.winrm_operation_timeout_seconds,
                                    read_timeout_sec=s.winrm_read_timeout_seconds,
                                    deadline_sec=s.winrm_deadline_seconds, max_shells_per_host=s.per_host_concurrency))


def build(runtime: Runtime, port: WinRMPort | None = None) -> int:
    settings = runtime.settings
    port = Metered(port) if port is not None else winrm_port(settings)
    revoker = Revoker(runtime.factory, port, settings, runtime.clock, runtime.stopping)

    def work(request_id: str, in_process: bool) -> None:
        # A re-drive (in_process=False) has the durable schedule as its retry.
        revoker.work(request_id, in_process=in_process)
        runtime.relay.wake()

    pool = RevocationPool(settings.revocation_threads, work, revoker.claim_due)
    sweeper = Sweeper(runtime.factory, runtime.clock, revoker.claim_due, pool.room, pool.submit,
                      revoker.lease_until)
    process = make_process(runtime.factory, runtime.clock, lambda rid: pool.submit(rid, in_process=True),
                           revoker.lease_until, sweep_interval=settings.sweep_interval_seconds)
    reconciler = Reconciler(runtime.factory, port, settings, runtime.clock)
    periodic = [Periodic("sweeper", settings.sweep_interval_seconds, sweeper),
                Periodic("reconciler", settings.sweep_interval_seconds, reconciler)]
    if settings.expiry_timers:
        timers = ExpiryTimers(runtime.factory, runtime.clock, sweeper.expire, interval=settings.sweep_interval_seconds,
                              cap=settings.expiry_timers)
        periodic += [Periodic("expiry-timers.read", settings.sweep_interval_seconds, timers.arm),
                     Periodic("expiry-timers", 0.0, timers.step)]  # each step waits for its next timer
    try:
        return runtime.serve(ROUTING_KEYS, process, periodic=periodic)
    finally:
        pool.shutdown(POOL_GRACE_SECONDS)
        port.close()  # the pooled shells: a restart must not leak them against the hosts' shell quota


def main() -> None:
    daemon_main("reaper", DESCRIPTION, build)
