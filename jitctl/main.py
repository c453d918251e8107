"""`jitctl`, the operator's command line (contract section 5).

Each command group lives in its own module exposing `register(subparsers)`, which adds its parsers
with `set_defaults(func=...)`; `func(args)` returns the exit code. Add a group by listing its module.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from jitctl import config, decide, demo, extend, ledger, query, revoke
from jitctl.common import CliError
from shared import logs

COMMAND_MODULES = [config, decide, query, revoke, extend, ledger, demo]


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="jitctl", description="Operate jit-elevation: configuration, requests, "
                                   "decisions, status and the audit trail. Settings come from JIT_* variables.")
    subparsers = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return root


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    # Library log lines (pika, the publisher) go to stderr quietly; command output is on stdout.
    logs.configure("warning", "console")
    # pika logs a traceback for every refused connection; the command's own message says it better.
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    try:
        code = args.func(args)
    except CliError as exc:
        print(f"jitctl {args.command}: {exc}", file=sys.stderr)
        code = exc.code
    except KeyboardInterrupt:
        code = 130
    raise SystemExit(code)


if __name__ == "__main__":
    main()
