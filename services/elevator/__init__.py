"""jit-elevator: turns `elevation.approved` into membership of the task's group on the Windows host.

`claim` decides and claims (APPROVED -> ELEVATING), `membership` does the WinRM work outside any
transaction, `record` writes the outcome (ELEVATED, or REVOKING with failed=True), `handler` ties
them together and compensates when a check-in or expiry overtook an add in flight. See docs/elevator.md.
"""
