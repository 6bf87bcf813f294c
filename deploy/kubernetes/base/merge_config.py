"""Write the gateway's configuration: the ConfigMap's file with the Secret's YAML merged over it.

Run by the Deployment's init container with the image's Python:
    python merge_config.py CONFIG SECRET OUTPUT
Mappings merge key by key, anything else in SECRET replaces the value in CONFIG. OUTPUT is written
mode 0600 (an in-memory emptyDir only the gateway's user reads); nothing is printed, not even on a
YAML error (the position only), as the Secret's values must not reach the pod's log.
"""

import os
import sys
from typing import Any

import yaml


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as stream:
            data = yaml.safe_load(stream) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        sys.exit(f"merge_config: {path} is not valid YAML{where}")
    if not isinstance(data, dict):
        sys.exit(f"merge_config: {path} must be a mapping of sections")
    return data


def main(config: str, secret: str, output: str) -> None:
    merged = merge(load(config), load(secret))
    descriptor = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
        yaml.safe_dump(merged, stream, sort_keys=False)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: merge_config.py CONFIG SECRET OUTPUT")
    main(*sys.argv[1:])
