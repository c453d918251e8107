"""What every command a person types shares: exit codes, one-line usage errors, `--version`.

No command prints a Python traceback: a usage error is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from shared.version import VERSION

OK, FAILED, USAGE, REFUSED, TIMED_OUT, INTERRUPTED = 0, 1, 2, 3, 4, 130

EXIT_CODES = """exit codes:
  0    done
  1    failed: the database or the broker is not usable, a request is unknown or in the wrong state
  2    usage: a bad option, an invalid file or JIT_* variable; nothing was done
  3    --wait: the outcome was not the one asked for (denied, refused)
  4    --wait: no outcome within the time given
  130  interrupted (Ctrl-C)"""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the problem and where help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"{parser.prog.split()[0]} {VERSION}",
                        help="print the version and exit")


def fail(prog: str, message: str, code: int = FAILED) -> NoReturn:
    print(f"{prog}: {message}", file=sys.stderr)
    raise SystemExit(code)
