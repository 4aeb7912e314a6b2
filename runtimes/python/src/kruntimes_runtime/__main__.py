"""`python -m kruntimes_runtime`: run the python Runtime Server."""

import sys

from .cli import main

sys.exit(main())
