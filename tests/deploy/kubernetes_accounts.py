"""The overlay's tornadoproxy-accounts Secret as a gateway pod sees it: each line of
accounts.env.example (`<file name>=<value>`) a file under the Deployment's mount, written here under a
directory of the test's, with the merged configuration pointed there."""

from __future__ import annotations

from pathlib import Path

from tests.harness import ROOT

ACCOUNTS_ENV = ROOT / "deploy" / "kubernetes" / "overlays" / "production" / "accounts.env.example"
MOUNT = "/etc/tornadoproxy/accounts"  # where deployment.yaml mounts it (test_kubernetes checks)


def account_files(directory: Path, merged: Path) -> dict[str, str]:
    """Write the Secret's files into `directory` and point `merged` (a configuration) at them; the
    file name to value of each."""
    lines = ACCOUNTS_ENV.read_text().splitlines()
    values = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    directory.mkdir()
    for name, value in values.items():
        (directory / name).write_text(value)
    merged.write_text(merged.read_text().replace(MOUNT + "/", f"{directory}/"))
    return values
