"""Command line: `tornadoproxy --config FILE` (or `python -m tornadoproxy --config FILE`)."""

from __future__ import annotations

import argparse
import os
import sys

from tornadoproxy import __version__
from tornadoproxy.server import main as serve_main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tornadoproxy", description=__doc__)
    parser.add_argument("--config", metavar="FILE", help="YAML configuration (default: built-in defaults)")
    parser.add_argument("--version", action="version", version=f"tornadoproxy {__version__}")
    args = parser.parse_args(argv)
    return serve_main(args.config, os.environ)


if __name__ == "__main__":
    sys.exit(main())
