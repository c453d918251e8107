"""The installed version of jit-elevation, shown by every command's `--version` and in `daemon.started`."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    try:
        return version("jit-elevation")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "0+unknown"


VERSION = package_version()
