"""``python -m nbhelpers ...``: the ``nbhelpers`` command (:mod:`nbhelpers.cli`)."""
import sys

from .cli import main

sys.exit(main())
