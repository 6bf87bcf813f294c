"""Prometheus figures of `/imitate/v1/chat/completions`: completions, time to first token, tokens,
failures by code (each account tried counted), the proof of work, conversations hidden.

Labels are bounded: the answer mode, who paid (pool or the client's own token), a fixed result
set, codes of the error catalogue (errors.Code), proof-of-work failure reasons. Every series is
created at start-up, so rates and alerts see zeros.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from tornadoproxy.observability.metrics import GATEWAY_ERROR_CODES, LATENCY_BUCKETS

MODES = ("stream", "plain")
PAYERS = ("pool", "token")
# ok: the answer ended well; error: it ended with an error (before or after its first text);
# client_gone: the client left first.
RESULTS = ("ok", "error", "client_gone")
TOKEN_KINDS = ("prompt", "completion")
PROOF_FAILURES = ("too_hard", "exhausted", "malformed")
HIDE_RESULTS = ("ok", "failed")
# Hashes a proof of work took: from the requirements token's few to the 2,000,000 default limit.
ATTEMPT_BUCKETS = (16, 256, 4096, 16384, 65536, 131072, 262144, 524288, 1048576, 2097152, 8388608)


class ImitateMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._completions = Counter(
            "tornadoproxy_imitate_completions",
            "Chat completions answered by ChatGPT web accounts, by mode (stream or plain), who paid "
            "(pool or the client's own accessToken) and result.",
            ("mode", "payer", "result"),
            registry=registry,
        )
        self._first_token = Histogram(
            "tornadoproxy_imitate_first_token_seconds",
            "Time from the request to the first assistant text (sentinel, proof of work, failovers "
            "and the account queue included).",
            ("payer",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._tokens = Counter(
            "tornadoproxy_imitate_tokens",
            "Tokens of completed answers (the usage reported to clients), prompt and completion.",
            ("kind",),
            registry=registry,
        )
        self._errors = Counter(
            "tornadoproxy_imitate_errors",
            "Failed attempts of completions by error code: each account tried before the first text "
            "(failed over or not) and each answer that failed midway.",
            ("code",),
            registry=registry,
        )
        self._proof_seconds = Histogram(
            "tornadoproxy_imitate_proof_of_work_seconds",
            "Time a proof of work took, waiting for a free worker included.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._proof_attempts = Histogram(
            "tornadoproxy_imitate_proof_of_work_attempts",
            "Hashes a solved proof of work took.",
            buckets=ATTEMPT_BUCKETS,
            registry=registry,
        )
        self._proof_failures = Counter(
            "tornadoproxy_imitate_proof_of_work_failures",
            "Proofs of work not solved, by reason (too_hard: over imitate.proof_hardest_difficulty; "
            "exhausted: imitate.proof_max_attempts spent; malformed).",
            ("reason",),
            registry=registry,
        )
        self._hidden = Counter(
            "tornadoproxy_imitate_conversations_hidden",
            "Conversations hidden after their answer (imitate.history: hide), by result.",
            ("result",),
            registry=registry,
        )
        self._precreate()

    def _precreate(self) -> None:
        self._first_token_children = {payer: self._first_token.labels(payer).observe for payer in PAYERS}
        for mode in MODES:
            for payer in PAYERS:
                for result in RESULTS:
                    self._completions.labels(mode, payer, result)
        for kind in TOKEN_KINDS:
            self._tokens.labels(kind)
        for code in GATEWAY_ERROR_CODES:
            self._errors.labels(code)
        for reason in PROOF_FAILURES:
            self._proof_failures.labels(reason)
        for result in HIDE_RESULTS:
            self._hidden.labels(result)

    def count_completion(self, stream: bool, payer: str, result: str) -> None:
        self._completions.labels("stream" if stream else "plain", payer, result).inc()

    def observe_first_token(self, payer: str, seconds: float) -> None:
        self._first_token_children[payer](seconds)

    def count_tokens(self, prompt: int, completion: int) -> None:
        self._tokens.labels("prompt").inc(prompt)
        self._tokens.labels("completion").inc(completion)

    def count_error(self, code: str) -> None:
        self._errors.labels(code if code in GATEWAY_ERROR_CODES else "other").inc()

    def observe_proof(self, seconds: float, attempts: int) -> None:
        self._proof_seconds.observe(seconds)
        self._proof_attempts.observe(attempts)

    def count_proof_failure(self, reason: str) -> None:
        self._proof_failures.labels(reason if reason in PROOF_FAILURES else "malformed").inc()

    def count_hidden(self, ok: bool) -> None:
        self._hidden.labels("ok" if ok else "failed").inc()
