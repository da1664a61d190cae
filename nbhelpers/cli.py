"""The ``nbhelpers`` command: ``nbhelpers report ...`` (run notebooks into HTML reports)."""
from __future__ import annotations

import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: nbhelpers report [--out DIR] [--only NAME ...] [--fast] [--model NAME]")
        return 0
    if argv[0] == "report":
        from .report import main as report_main

        return report_main(argv[1:])
    print(f"unknown command {argv[0]!r}; try `nbhelpers report --help`", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
