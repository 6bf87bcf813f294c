"""Debian's podman for the deploy tests: a private containers.conf, the stand-in base image, builds.

No registry is reachable from these machines, so `FROM python:3.11-slim-bookworm` is given a local
stand-in: a minimal Debian bookworm made with debootstrap from the mirror that apt's own sources list
names, with Python 3.11, venv and pip, imported into podman's store under the official image's names.
It is rebuilt only when what it is made from changes (the recipe, the mirror, the host's extra CA
certificates): its label records a digest of those, so repeated runs on one machine reuse it, and a
fresh machine (or a wiped store) makes it from scratch. An image of that name that does not carry the
label is a real one (a machine that can pull) and is used as it is.

Podman runs with runc (crun refuses these machines' hybrid cgroups) and file and process limits pinned
at what the sandbox allows, both set in a containers.conf of our own: nothing under /etc is changed.
Every container is run with the host's network and reached on loopback only (podman's bridge and slirp
networks are private-range addresses, which no test here may send to).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BASE_NAMES = (
    "docker.io/library/python:3.11-slim-bookworm",
    "docker.io/library/python:3.11-slim",
    "localhost/python:3.11-slim",
)
STANDIN_LABEL = "org.tornadoproxy.test.standin"
SUITE = "bookworm"  # python3.11 is bookworm's Python, as in the official image's tag
PACKAGES = ("python3.11", "python3-venv", "python3-pip", "python-is-python3", "ca-certificates")
# Bumped whenever make_rootfs() changes what it puts in the image.
RECIPE = 1
EXTRA_CERTS = Path("/usr/local/share/ca-certificates")
LOCK = Path(tempfile.gettempdir()) / "tornadoproxy-test-standin.lock"
# What the official image sets and a rootfs import does not.
IMAGE_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
)


def missing_tools() -> str | None:
    """Why container tests cannot run here, or None (scripts/test installs all of these)."""
    for tool in ("podman", "runc", "debootstrap", "podman-compose"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (./scripts/test installs it with apt-get)"
    if os.geteuid() != 0:
        return "debootstrap and podman's root store need root"
    return None


@dataclass(frozen=True)
class Podman:
    """podman with our containers.conf; every call captured and bounded in time."""

    conf: Path

    @classmethod
    def configured(cls, directory: Path) -> Podman:
        conf = directory / "containers.conf"
        conf.write_text(
            '[engine]\nruntime = "runc"\n\n[containers]\n'
            'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
        )
        return cls(conf)

    @property
    def env(self) -> dict[str, str]:
        return os.environ | {"CONTAINERS_CONF": str(self.conf)}

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["podman", *args], capture_output=True, text=True, timeout=timeout, env=self.env
        )
        if check and done.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
        return done

    def inspect(self, what: str) -> dict[str, Any]:
        return dict(json.loads(self.run("inspect", what).stdout)[0])

    def label(self, image: str, name: str) -> str | None:
        """A label of a local image; None when there is no such image."""
        if self.run("image", "exists", image, check=False).returncode != 0:
            return None
        labels = self.run("image", "inspect", image).stdout
        return str((json.loads(labels)[0].get("Labels") or {}).get(name, ""))

    def build(self, context: Path, tag: str, *extra: str, timeout: float = 600) -> str:
        """Build `context` (its Dockerfile, unchanged) and return the image id. `--format docker` keeps
        HEALTHCHECK; `--pull=never` uses the local base; RUN steps use the host's network."""
        with tempfile.TemporaryDirectory() as scratch:
            iid = Path(scratch) / "iid"
            self.run(
                "build", "--pull=never", "--format", "docker", "--network", "host",
                "--iidfile", str(iid), "-t", tag, *extra, str(context), timeout=timeout,
            )  # fmt: skip
            return iid.read_text().strip().removeprefix("sha256:")

    def remove_container(self, ident: str) -> None:
        self.run("rm", "--force", "--time", "0", ident, check=False)


# -- the stand-in base image ----------------------------------------------------------------------
def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian archive that apt's own sources name: the first `deb` entry for this host's
    release (not -security or -updates), in one-line or deb822 form."""
    codename = os_release().get("VERSION_CODENAME", SUITE)
    for types, uris, suites in apt_entries(apt_dir):
        if "deb" in types and codename in suites and uris:
            return uris[0].rstrip("/")
    raise RuntimeError(f"no deb entry for {codename} in {apt_dir}/sources.list(.d)")


def apt_entries(apt_dir: Path) -> Iterator[tuple[list[str], list[str], list[str]]]:
    """(types, uris, suites) of every enabled source entry."""
    one_line = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in (p for p in one_line if p.is_file()):
        for line in path.read_text().splitlines():
            words = [w for w in line.split("#", 1)[0].split() if not w.startswith("[")]
            if len(words) >= 3:
                yield [words[0]], [words[1]], [words[2]]
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if ":" in line and not line.startswith(("#", " ")):
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
            if fields.get("enabled", "yes").lower() != "no":
                yield (fields.get("types", "").split(), fields.get("uris", "").split(),
                       fields.get("suites", "").split())  # fmt: skip


def os_release() -> dict[str, str]:
    text = Path("/etc/os-release").read_text()
    return dict(
        (key, value.strip('"')) for key, _, value in (line.partition("=") for line in text.splitlines())
    )


def standin_key(mirror: str) -> str:
    """A digest of everything the stand-in is made from."""
    recipe = hashlib.sha256(f"{RECIPE} {SUITE} minbase {' '.join(PACKAGES)} {mirror}".encode())
    for cert in sorted(EXTRA_CERTS.glob("*.crt")):
        recipe.update(cert.name.encode() + cert.read_bytes())
    return recipe.hexdigest()[:32]


def ensure_base_image(podman: Podman) -> str:
    """The stand-in for python:3.11-slim-bookworm, made when missing or stale; returns what was done
    ("real image", "cached" or "built")."""
    with _machine_lock():
        mirror = debian_mirror()
        key = standin_key(mirror)
        present = podman.label(BASE_NAMES[0], STANDIN_LABEL)
        if present == "":
            return "real image"
        if present == key:
            return "cached"
        with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="tornadoproxy-standin-") as scratch:
            rootfs = Path(scratch) / "rootfs"
            make_rootfs(rootfs, mirror)
            changes = [arg for change in (*IMAGE_CHANGES, f"LABEL {STANDIN_LABEL}={key}")
                       for arg in ("--change", change)]  # fmt: skip
            import_rootfs(podman, rootfs, changes)
        for name in BASE_NAMES[1:]:
            podman.run("tag", BASE_NAMES[0], name)
        return "built"


def import_rootfs(podman: Podman, rootfs: Path, changes: list[str]) -> None:
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    imported = subprocess.run(
        ["podman", "import", *changes, "-", BASE_NAMES[0]],
        stdin=tar.stdout, capture_output=True, text=True, env=podman.env, timeout=300,
    )  # fmt: skip
    assert tar.stdout is not None
    tar.stdout.close()
    if tar.wait(60) != 0 or imported.returncode != 0:
        raise AssertionError(f"importing the stand-in failed:\n{imported.stderr}")


def make_rootfs(rootfs: Path, mirror: str) -> None:
    """debootstrap a minimal bookworm with Python 3.11, trusting the host's extra CA certificates (so
    pip in a RUN step reaches the package index through this machine's egress), pip allowed to install
    into the system Python as in the official image, and without apt's caches or documentation."""
    subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(rootfs), mirror],
        check=True, capture_output=True, timeout=900,
    )  # fmt: skip
    for cert in EXTRA_CERTS.glob("*.crt"):
        shutil.copy2(cert, rootfs / "usr/local/share/ca-certificates" / cert.name)
    subprocess.run(["chroot", str(rootfs), "update-ca-certificates"], check=True, capture_output=True)
    (rootfs / "usr/lib/python3.11/EXTERNALLY-MANAGED").unlink(missing_ok=True)
    for clutter in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
        for entry in (rootfs / clutter).glob("*"):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            elif entry.name != "lock":
                entry.unlink()


@contextlib.contextmanager
def _machine_lock() -> Iterator[None]:
    """One stand-in build at a time on this machine (parallel suites share podman's store)."""
    with open(LOCK, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
