"""Run the report generation example with ``python -m came_grad.examples.rrg``."""

import sys

from came_grad.examples.rrg.cli import main

sys.exit(main())
