"""Everything that would reach stderr goes through the redaction filter, as JSON lines naming the worker:
tornado's loggers, warnings, uncaught exceptions in the main thread, in threads and in finalizers.
Run in a fresh interpreter: the hooks are process-wide."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.harness import ROOT
from tests.secrets_used import ACCESS_TOKEN, API_KEY, LOGIN_PASSWORD, PROXY_PASSWORD, SESSION_KEY

SCRIPT = textwrap.dedent(
    f"""
    import gc, logging, threading, warnings
    from tornadoproxy.config.schema import LoggingConfig
    from tornadoproxy.observability.logs import configure_logging

    configure_logging(LoggingConfig(format="json"), frozenset({{{PROXY_PASSWORD!r}}}), worker=3)
    logging.getLogger("tornado.application").error("Uncaught exception with Bearer {ACCESS_TOKEN}")
    logging.getLogger("tornado.general").warning("proxy said {PROXY_PASSWORD}")
    warnings.warn("api_key={API_KEY} in a warning")

    def fail():
        raise RuntimeError("thread saw {SESSION_KEY}")

    thread = threading.Thread(target=fail)
    thread.start()
    thread.join()

    class Leaky:
        def __del__(self):
            raise ValueError("finalizer saw {API_KEY}")

    Leaky()
    gc.collect()
    raise SystemError("password={LOGIN_PASSWORD}")
    """
)


def test_every_output_path_is_json_redacted_and_names_the_worker() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1 and result.stdout == ""
    lines = [json.loads(line) for line in result.stderr.splitlines()]  # nothing but JSON lines
    for secret in (ACCESS_TOKEN, PROXY_PASSWORD, API_KEY, SESSION_KEY, LOGIN_PASSWORD):
        assert secret not in result.stderr
    assert all(line["worker"] == 3 for line in lines)
    by_logger = {line["logger"]: line for line in lines}
    assert set(by_logger) == {
        "tornado.application",
        "tornado.general",
        "py.warnings",
        "tornadoproxy.uncaught",
    }
    uncaught = [line for line in lines if line["logger"] == "tornadoproxy.uncaught"]
    assert [line["message"] for line in uncaught] == [
        "uncaught exception in a thread",
        "exception ignored in Leaky.__del__",
        "uncaught exception",
    ]
    assert all("[redacted]" in line["exception"] for line in uncaught)
    assert "Traceback" in uncaught[-1]["exception"] and uncaught[-1]["level"] == "critical"
