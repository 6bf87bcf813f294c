"""Print conf/tornadoproxy.yaml from the option declarations in tornadoproxy/config.py (the one source)."""

import dataclasses
import textwrap
import typing

import yaml

from tornadoproxy.config import Config
from tornadoproxy.options import describe

hints = typing.get_type_hints(Config)
out = [
    "# tornadoproxy configuration: every key with its default and what it does.",
    "# Start with: tornadoproxy --config conf/tornadoproxy.yaml",
    "# Environment variables win over this file: GO_CHATGPT_API_PORT or PORT (server.port),",
    "# GO_CHATGPT_API_PROXY or PROXY (egress.proxy).",
    "",
]
for f in dataclasses.fields(Config):
    out.append(f"# --- {f.name}: {f.metadata['help']}")
    out.append(f"{f.name}:")
    for path, default, help in describe(hints[f.name], f.name):
        key = path.split(".", 1)[1]
        for line in textwrap.wrap(help, 96):
            out.append(f"  # {line}")
        if isinstance(default, tuple):
            default = list(default)
        if hasattr(default, "items"):
            default = dict(default)
        val = yaml.safe_dump({key: default}, default_flow_style=True, width=1000).strip()[1:-1]
        out.append(f"  {val}")
    out.append("")
print("\n".join(out))
