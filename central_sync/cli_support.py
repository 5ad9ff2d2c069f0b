"""What every central CLI extension shares: turning a subcommand's errors into the CLI's answer."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from central_sync.errors import CentralError
from edge.errors import KentonganError

Handler = Callable[[argparse.Namespace], int]


def cli_command(func: Callable[[argparse.Namespace], object]) -> Handler:
    """``func`` as a subcommand handler: a ``CentralError`` or ``KentonganError`` becomes one
    ``error: ...`` line on stderr and exit status 2 (never a traceback)."""
    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))  # type: ignore[call-overload]
        except (CentralError, KentonganError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return run
