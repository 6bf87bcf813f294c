"""tornadoproxy: a self-hosted gateway in front of the ChatGPT web backend and the OpenAI Platform API."""

import re
from pathlib import Path

from setuptools import find_packages, setup

# The one place the version is written: tornadoproxy/__init__.py (read, not imported: importing the
# package would need its requirements before they are installed).
VERSION = re.search(
    r'^__version__ = "([^"]+)"$', (Path(__file__).parent / "tornadoproxy/__init__.py").read_text(), re.M
).group(1)

setup(
    name="tornadoproxy",
    version=VERSION,
    description=__doc__,
    python_requires=">=3.11",
    packages=find_packages(include=["tornadoproxy", "tornadoproxy.*"]),
    install_requires=[
        "tornado>=6.6,<6.7",  # the fetcher relies on 6.6's curl client (streaming buffer, handle reset)
        "pycurl>=7.45",
        # The browser profiles' engine (impersonation.py): curl-impersonate's libcurl on BoringSSL.
        # Pinned to a minor: the engine reads two of its handle attributes (impersonation.py).
        "curl_cffi>=0.17,<0.18",
        "cachetools>=5.3",
        "PyYAML>=6.0",
        "prometheus-client>=0.20",
        "cryptography>=42",  # AES-GCM sealing of cached tokens (sealing.py)
        "redis>=5.0",  # the shared token store (tokenstore.py), asyncio API
        "tiktoken>=0.7",  # OpenAI's tokenizer for /imitate usage counts (encoding data ships with us)
    ],
    package_data={"tornadoproxy.imitate": ["data/*.gz", "data/NOTICE"]},
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "openai>=1.40",
            "hypothesis>=6.100",
            "brotli>=1.1",  # to send br bodies from the simulator (decoding is libcurl's)
            "h2>=4.1",  # the TLS endpoint's HTTP/2 side, for Akamai fingerprints (tests/tls_endpoint.py)
            "dockerfile>=3.3",  # BuildKit's own Dockerfile parser, for the Dockerfile lint
            "wheel",  # the Dockerfile's pip install step is replayed offline (no build isolation)
            "kubernetes-validate>=1.30",  # the Kubernetes manifests against the API's own schemas, offline
            "ruff>=0.6",
            "mypy>=1.10",
            "types-PyYAML",
            "types-cachetools",
        ],
    },
    entry_points={"console_scripts": ["tornadoproxy = tornadoproxy.__main__:main"]},
)
