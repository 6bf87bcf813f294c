"""Print conf/tornadoproxy.yaml from the option declarations in tornadoproxy/config/ (the one source)."""

import dataclasses
import textwrap
import typing

import yaml

from tornadoproxy.config.options import describe, record_type
from tornadoproxy.config.schema import Config
from tornadoproxy.redact import Secret


def plain(default: object) -> object:
    if isinstance(default, tuple):
        return list(default)
    if hasattr(default, "items"):
        return dict(default)  # type: ignore[call-overload]
    if isinstance(default, Secret):
        return default.reveal()
    return default


def render_value(key: str, default: object) -> str:
    # In the order declared: a model map is tried in order.
    flow = yaml.safe_dump({key: plain(default)}, default_flow_style=True, width=1000, sort_keys=False)
    return flow.strip()[1:-1]


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
    record = record_type(hints[f.name])
    if record is not None:
        out.append("# Each entry takes these keys (shown with their defaults):")
        for path, default, help in describe(record):
            out.append(f"#   {render_value(path, default)}")
            out.extend(f"#       {line}" for line in textwrap.wrap(help, 90))
        out.append(f"{f.name}: []")
        out.append("")
        continue
    out.append(f"{f.name}:")
    for path, default, help in describe(hints[f.name], f.name):
        key = path.split(".", 1)[1]
        for line in textwrap.wrap(help, 96):
            out.append(f"  # {line}")
        out.append(f"  {render_value(key, default)}")
    out.append("")
print("\n".join(out))
