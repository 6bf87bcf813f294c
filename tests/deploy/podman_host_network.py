"""podman, for Debian's podman-compose 1.0.3 with `network_mode: host` (its `--podman-path`).

That podman-compose adds `--net <project>_default --network-alias <service>` to every `podman run`,
even beside `--network host`, and podman refuses the pair ("cannot set multiple networks without
bridge network mode"). Where `--network host` is asked for, this drops the two added options and runs
podman with everything else unchanged; any other call passes through as it is.
"""

from __future__ import annotations

import os
import sys


def without_compose_network(args: list[str]) -> list[str]:
    if not any(a == "--network" and b == "host" for a, b in zip(args, args[1:], strict=False)):
        return args
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in ("--net", "--network-alias"):
            skip = True
        else:
            kept.append(arg)
    return kept


if __name__ == "__main__":
    os.execvp("podman", ["podman", *without_compose_network(sys.argv[1:])])
