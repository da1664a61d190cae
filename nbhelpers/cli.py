"""The ``nbhelpers`` command: ``nbhelpers report ...`` (run notebooks into HTML reports),
``nbhelpers reproduce CONFIG`` (a published table, ours against theirs) and ``nbhelpers cache info|clear``
(the on-disk result cache). ``python -m nbhelpers ...`` is the same command."""
from __future__ import annotations

import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: nbhelpers report [NOTEBOOK ...] [--config FILE.yaml] [-p NAME=VALUE ...] [--out DIR]\n"
              "       nbhelpers reproduce CONFIG.yaml [--data-root DIR] [--model NAME] [--set KEY=VALUE ...]\n"
              "       nbhelpers cache info | clear [--kind KIND]\n"
              "`nbhelpers report --help`, `nbhelpers reproduce --help` and `nbhelpers cache --help` say more.")
        return 0
    if argv[0] == "report":
        from .report import main as report_main

        return report_main(argv[1:])
    if argv[0] == "reproduce":
        from .reproduce import main as reproduce_main

        return reproduce_main(argv[1:])
    if argv[0] == "cache":
        from .cache import main as cache_main

        return cache_main(argv[1:])
    print(f"unknown command {argv[0]!r}; the commands are `nbhelpers report`, `nbhelpers reproduce` and "
          "`nbhelpers cache`", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
