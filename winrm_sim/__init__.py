"""jit-winrm-sim: simulated Windows hosts that pywinrm talks to over real HTTP(S), for tests and demos."""

from .host import ADMINISTRATORS, REMOTE_DESKTOP_USERS
from .server import CommandRecord, SimulatedHost

__all__ = ["ADMINISTRATORS", "REMOTE_DESKTOP_USERS", "CommandRecord", "SimulatedHost"]
