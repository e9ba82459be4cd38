"""`python -m harness.report results/<recipe> [--out reports]`."""

import sys

from harness.command import guarded
from harness.report.build import main

sys.exit(guarded(main))
