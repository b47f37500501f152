"""`python -m rackwatch`."""

import sys

from rackwatch.cli import main

sys.exit(main())
