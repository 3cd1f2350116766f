"""`python -m distmatch ...`: the same command line as `distmatch ...`."""
import sys

from .cli import main

sys.exit(main())
