"""Command line: `tornadoproxy --config FILE` (or `python -m tornadoproxy --config FILE`).

`tornadoproxy --hash-key` reads a client key on stdin and prints the digest to put in
`access.client_keys`.
"""

from __future__ import annotations

import argparse
import os
import sys

from tornadoproxy import __version__
from tornadoproxy.process.server import main as serve_main
from tornadoproxy.web.access import key_digest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tornadoproxy", description="tornadoproxy gateway")
    parser.add_argument("--config", metavar="FILE", help="YAML configuration (default: built-in defaults)")
    parser.add_argument(
        "--hash-key",
        action="store_true",
        help="read a client key on stdin, print its digest for access.client_keys",
    )
    parser.add_argument("--version", action="version", version=f"tornadoproxy {__version__}")
    args = parser.parse_args(argv)
    if args.hash_key:
        key = sys.stdin.readline().strip()
        if not key:
            print("tornadoproxy: no key on stdin", file=sys.stderr)
            return 2
        print(key_digest(key))
        return 0
    return serve_main(args.config, os.environ)


if __name__ == "__main__":
    sys.exit(main())
