"""`python -m harness.report results/<recipe> [--out reports]`."""

from harness.report.build import main

main()
