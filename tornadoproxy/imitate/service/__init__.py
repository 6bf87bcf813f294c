"""Answering one `/imitate` chat completion (docs/imitate.md): the orchestration around the pure
modules of the package. Which account answers and how its lease ends (seats), one attempt with an
account up to its first assistant text (attempt), the answer written to the client (writer), and
the service that ties them together with failover (completions).

Unlike the rest of `tornadoproxy.imitate`, this does I/O: it uses the relay, the fetcher and the
account pool; the modules above it stay pure.
"""
