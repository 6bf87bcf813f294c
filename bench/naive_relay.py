"""Baseline "naive relay": the least a Tornado + CurlAsyncHTTPClient relay must do, for comparison.

No auth check, metrics, access log, header filtering or error shapes: /platform/v1/<path> goes to
<upstream>/v1/<path> with the body and Authorization, SSE is written and flushed chunk by chunk,
anything else is answered with Content-Length. Not product code; only the bench starts it.
"""

from __future__ import annotations

import argparse
import asyncio
import socket

from tornado.curl_httpclient import CurlAsyncHTTPClient
from tornado.httpclient import HTTPRequest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.process import fork_processes
from tornado.web import Application, RequestHandler


class Relay(RequestHandler):
    def initialize(self, client: CurlAsyncHTTPClient, upstream: str) -> None:
        self.client = client
        self.upstream = upstream

    async def post(self, path: str) -> None:
        state = {"status": 0, "stream": False, "done": False}
        early: list[bytes] = []

        def on_header(line: str) -> None:
            if line.startswith("HTTP/"):
                state["status"] = int(line.split(" ", 2)[1])
            elif line.lower().startswith("content-type:"):
                state["stream"] = "text/event-stream" in line
                self.set_header("Content-Type", line.split(":", 1)[1].strip())
            elif line in ("\r\n", "\n") and state["status"] >= 200:
                state["done"] = True
                self.set_status(int(state["status"]))
                for chunk in early:  # the body can arrive before the queued header lines
                    on_body(chunk)

        def on_body(chunk: bytes) -> None:
            if not state["done"]:
                early.append(chunk)
                return
            self.write(chunk)
            if state["stream"]:
                self.flush()

        request = HTTPRequest(
            f"{self.upstream}/v1/{path}",
            method="POST",
            body=self.request.body,
            headers={
                "Authorization": self.request.headers.get("Authorization", ""),
                "Content-Type": self.request.headers.get("Content-Type", "application/json"),
            },
            header_callback=on_header,
            streaming_callback=on_body,
            request_timeout=600,
        )
        response = await self.client.fetch(request, raise_error=False)
        if not state["done"]:
            self.set_status(response.code if response.code != 599 else 502)
            for chunk in early:
                self.write(chunk)


async def serve(sockets: list[socket.socket], upstream: str, max_clients: int) -> None:
    client = CurlAsyncHTTPClient(force_instance=True, max_clients=max_clients)
    app = Application([(r"/platform/v1/(.*)", Relay, {"client": client, "upstream": upstream})])
    HTTPServer(app, idle_connection_timeout=300).add_sockets(sockets)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:18000")
    parser.add_argument("--max-clients", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    listening = bind_sockets(args.port, "127.0.0.1", backlog=4096)
    if args.workers > 1:
        fork_processes(args.workers)  # sockets bound before the fork, client and loop after it
    asyncio.run(serve(listening, args.upstream, args.max_clients))
