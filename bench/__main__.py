"""`python -m bench ARGS`: what bench/run executes once the tools are installed."""

import sys

from bench.cli import main

sys.exit(main(sys.argv[1:]))
