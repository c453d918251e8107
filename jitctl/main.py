"""`jitctl`, the operator's command line (contract section 5).

Each command group lives in its own module exposing `register(subparsers)`, which adds its parsers
with `set_defaults(func=...)`; `func(args)` returns the exit code. Add a group by listing its module.
No path a person types ends in a traceback: errors are one line on stderr with a documented exit code.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from jitctl import completion, config, deadletters, decide, demo, extend, ledger, query, revoke
from jitctl.common import CliError
from shared import logs
from shared.cli import EXIT_CODES, FAILED, INTERRUPTED, OneLineParser, add_version
from shared.logs import hide_password

COMMAND_MODULES = [config, decide, query, revoke, extend, ledger, deadletters, demo, completion]


def parser() -> argparse.ArgumentParser:
    root = OneLineParser(prog="jitctl", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXIT_CODES,
                         description="Operate jit-elevation: configuration, requests, decisions, status and the "
                                     "audit trail. Settings come from JIT_* variables (README).")
    add_version(root)
    subparsers = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subparsers)
    for sub in subparsers.choices.values():
        add_version(sub)
        sub.formatter_class = argparse.RawDescriptionHelpFormatter
        sub.epilog = ((sub.epilog + "\n\n") if sub.epilog else "") + EXIT_CODES
    return root


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    # Library log lines (pika, the publisher) go to stderr quietly; command output is on stdout.
    logs.configure("warning", "console")
    # pika logs a traceback for every refused connection; the command's own message says it better.
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    try:
        code = args.func(args)
        sys.stdout.flush()
    except CliError as exc:
        print(f"jitctl {args.command}: {exc}", file=sys.stderr)
        code = exc.code
    except KeyboardInterrupt:
        code = INTERRUPTED
    except BrokenPipeError:
        # `jitctl requests | head -2`: the reader has what it wanted. Stop quietly, like other filters.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    except Exception as exc:  # a bug, or a failure no command foresaw: still one line, not a traceback
        detail = hide_password(str(exc).strip().splitlines()[0]) if str(exc).strip() else ""
        print(f"jitctl {args.command}: unexpected {type(exc).__name__}: {detail} (set JITCTL_TRACEBACK=1 to see "
              "where; please report it)", file=sys.stderr)
        if os.environ.get("JITCTL_TRACEBACK"):
            raise
        code = FAILED
    raise SystemExit(code)


if __name__ == "__main__":
    main()
