#!/usr/bin/env python3
"""A fault-injecting HTTP/1.1 proxy in front of an S3-compatible server.

The S3 backend's tests (storage/tests/s3_store.rs) put it between the store
and moto to check that every operation survives what real object stores do:

  error500       answer 500 InternalError (S3's XML error body), not forwarded
  slowdown503    answer 503 SlowDown, not forwarded
  latency        wait --latency-ms before forwarding
  reset_body     forward, then send half of the answer's body and reset the
                 connection (GET answers with a body only)
  drop_response  forward (the server applies the request), then reset the
                 connection instead of answering (methods in --drop-methods)
  outage         "reset": every connection is reset, new ones after their
                 request head; "refuse": the listening socket is closed, so
                 connects are refused, and open connections are reset

Each fault but the outage is a probability per request, rolled in that
order. Listens on 127.0.0.1 only. Standard library only.

Control (on the control port, and on the data port unless the outage
refuses connections):
  GET  /__faults         the fault settings as JSON
  POST /__faults         change them: {"error500": 0.2, "outage": "refuse", ...}
                         ("outage": null ends an outage)
  GET  /__stats          how many times each fault was injected, requests seen
                         (also by method: method_PUT, method_GET, ...),
                         requests forwarded
  POST /__stats/reset    zero the counters

On start it prints one line and keeps running until killed:
  FAULT_PROXY data=http://127.0.0.1:PORT control=http://127.0.0.1:PORT

Example:
  python3 scripts/objstore/fault_proxy.py --upstream http://127.0.0.1:9000 \\
      --port 9100 --control-port 9101 --error500 0.2 --slowdown503 0.2
"""

import argparse
import asyncio
import json
import random
import socket
import struct
import sys
import urllib.parse

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
}
PROBABILITIES = ("error500", "slowdown503", "latency", "reset_body", "drop_response")
COUNTERS = PROBABILITIES + ("outage_reset", "requests", "forwarded", "upstream_errors")
HEAD_LIMIT = 1 << 20

S3_ERROR = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Error><Code>{code}</Code><Message>{message}</Message>"
    "<RequestId>fault-proxy</RequestId></Error>"
)


class Message:
    """A request or an answer: first line, headers in order, whole body."""

    def __init__(self, first_line, headers, body=b""):
        self.first_line = first_line
        self.headers = headers
        self.body = body

    def header(self, name):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


def parse_head(raw):
    lines = raw.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"bad header line {line!r}")
        headers.append((name.strip(), value.strip()))
    return Message(lines[0], headers)


async def read_head(reader):
    """The head up to the blank line, or None on a clean end of stream."""
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if e.partial.strip():
            raise
        return None


async def read_chunked(reader):
    body = bytearray()
    while True:
        line = await reader.readuntil(b"\r\n")
        size = int(line.split(b";")[0].strip(), 16)
        if size == 0:
            # Trailers, up to the blank line.
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)


async def read_body(reader, msg, *, is_request, no_body=False):
    if no_body:
        return b""
    te = msg.header("transfer-encoding")
    if te and "chunked" in te.lower():
        return await read_chunked(reader)
    length = msg.header("content-length")
    if length is not None:
        return await reader.readexactly(int(length))
    if is_request:
        return b""
    return await reader.read()  # HTTP/1.0 style: the body ends with the connection


def reset(writer):
    """Close with RST (SO_LINGER 0), as a crashed server or middlebox would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


def render(first_line, headers, body=b""):
    head = first_line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return head.encode("latin-1") + body


class Proxy:
    def __init__(self, args):
        up = urllib.parse.urlsplit(args.upstream)
        if up.scheme != "http" or not up.hostname:
            sys.exit(f"--upstream must be http://host:port, not {args.upstream!r}")
        self.upstream = (up.hostname, up.port or 80)
        self.listen = args.listen
        self.port = args.port
        self.p = {
            "error500": args.error500,
            "slowdown503": args.slowdown503,
            "latency": args.latency_prob,
            "reset_body": args.reset_body,
            "drop_response": args.drop_response,
        }
        self.latency_ms = args.latency_ms
        self.drop_methods = [m.strip().upper() for m in args.drop_methods.split(",") if m.strip()]
        self.outage = None if args.outage == "none" else args.outage
        self.rng = random.Random(args.seed)
        self.stats = dict.fromkeys(COUNTERS, 0)
        self.clients = set()
        self.data_server = None

    # ---- settings -------------------------------------------------------

    def settings(self):
        return {
            **self.p,
            "latency_ms": self.latency_ms,
            "drop_methods": self.drop_methods,
            "outage": self.outage,
        }

    async def apply(self, change, asking=None):
        for name in PROBABILITIES:
            if name in change:
                value = float(change[name])
                if not 0.0 <= value <= 1.0:
                    raise ValueError(f"{name} must be in [0, 1]")
                self.p[name] = value
        if "latency_ms" in change:
            self.latency_ms = max(0, int(change["latency_ms"]))
        if "drop_methods" in change:
            self.drop_methods = [str(m).upper() for m in change["drop_methods"]]
        if "seed" in change:
            self.rng.seed(change["seed"])
        if "outage" in change:
            await self.set_outage(change["outage"], asking)

    async def set_outage(self, mode, asking=None):
        """Starts or ends an outage; `asking` (the connection that asked for
        it, when it is a data connection) gets its answer first."""
        if mode not in (None, "reset", "refuse"):
            raise ValueError("outage must be null, 'reset' or 'refuse'")
        self.outage = mode
        if mode is not None:
            for writer in list(self.clients):
                if writer is not asking:
                    self.stats["outage_reset"] += 1
                    reset(writer)
                    self.clients.discard(writer)
        if mode == "refuse" and self.data_server is not None:
            self.data_server.close()
            self.data_server = None
        if mode != "refuse" and self.data_server is None:
            await self.start_data()

    async def start_data(self):
        self.data_server = await asyncio.start_server(
            self.handle_client, self.listen, self.port, limit=HEAD_LIMIT, reuse_address=True
        )
        self.port = self.data_server.sockets[0].getsockname()[1]

    def roll(self, name):
        p = self.p[name]
        return p > 0 and self.rng.random() < p

    # ---- connections ----------------------------------------------------

    async def handle_client(self, reader, writer, control_only=False):
        if not control_only:
            self.clients.add(writer)
        try:
            while True:
                raw = await read_head(reader)
                if raw is None:
                    break
                req = parse_head(raw)
                req.body = await read_body(reader, req, is_request=True)
                keep = await self.serve(req, writer, control_only)
                if not keep:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            self.clients.discard(writer)
            if not writer.transport.is_closing():
                writer.close()

    async def handle_control(self, reader, writer):
        await self.handle_client(reader, writer, control_only=True)

    async def serve(self, req, writer, control_only):
        """Answers one request; False when the connection must end."""
        parts = req.first_line.split(" ")
        if len(parts) != 3:
            raise ValueError(f"bad request line {req.first_line!r}")
        method, target, _version = parts
        wants_close = (req.header("connection") or "").lower() == "close"
        if target.startswith("/__"):
            await self.control(method, target, req.body, writer)
            return not wants_close
        if control_only:
            await self.answer(writer, 404, "Not Found", b"control port: /__faults, /__stats\n")
            return not wants_close
        self.stats["requests"] += 1
        self.stats[f"method_{method}"] = self.stats.get(f"method_{method}", 0) + 1
        if self.outage is not None:
            self.stats["outage_reset"] += 1
            reset(writer)
            return False
        if self.roll("latency"):
            self.stats["latency"] += 1
            await asyncio.sleep(self.latency_ms / 1000)
        if self.roll("error500"):
            self.stats["error500"] += 1
            await self.s3_error(writer, 500, "Internal Server Error", "InternalError",
                                "We encountered an internal error. Please try again.")
            return not wants_close
        if self.roll("slowdown503"):
            self.stats["slowdown503"] += 1
            await self.s3_error(writer, 503, "Slow Down", "SlowDown",
                                "Please reduce your request rate.")
            return not wants_close
        try:
            status_line, headers, body = await self.forward(method, target, req)
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:
            self.stats["upstream_errors"] += 1
            await self.answer(writer, 502, "Bad Gateway", f"upstream: {e}\n".encode())
            return False
        self.stats["forwarded"] += 1
        if method in self.drop_methods and self.roll("drop_response"):
            # The server applied the request; its answer is lost.
            self.stats["drop_response"] += 1
            reset(writer)
            return False
        out_headers = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP]
        if method != "HEAD":
            out_headers = [(k, v) for k, v in out_headers if k.lower() != "content-length"]
            out_headers.append(("Content-Length", str(len(body))))
        out_headers.append(("Connection", "close" if wants_close else "keep-alive"))
        if method == "GET" and len(body) > 1 and self.roll("reset_body"):
            self.stats["reset_body"] += 1
            writer.write(render(status_line, out_headers, body[: len(body) // 2]))
            await writer.drain()
            reset(writer)
            return False
        writer.write(render(status_line, out_headers, body if method != "HEAD" else b""))
        await writer.drain()
        return not wants_close

    async def forward(self, method, target, req):
        """One request on a fresh upstream connection; the whole answer."""
        ureader, uwriter = await asyncio.open_connection(*self.upstream, limit=HEAD_LIMIT)
        try:
            headers = [(k, v) for k, v in req.headers
                       if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"]
            if req.body or method in ("PUT", "POST") or req.header("content-length") is not None:
                headers.append(("Content-Length", str(len(req.body))))
            headers.append(("Connection", "close"))
            uwriter.write(render(f"{method} {target} HTTP/1.1", headers, req.body))
            await uwriter.drain()
            while True:
                raw = await read_head(ureader)
                if raw is None:
                    raise ValueError("upstream closed without answering")
                answer = parse_head(raw)
                status = int(answer.first_line.split(" ")[1])
                if status >= 200:
                    break  # skip 1xx interim answers
            no_body = method == "HEAD" or status in (204, 304)
            body = await read_body(ureader, answer, is_request=False, no_body=no_body)
            return answer.first_line, answer.headers, body
        finally:
            uwriter.close()

    # ---- local answers --------------------------------------------------

    async def answer(self, writer, status, reason, body, content_type="text/plain"):
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        writer.write(render(f"HTTP/1.1 {status} {reason}", headers, body))
        await writer.drain()

    async def s3_error(self, writer, status, reason, code, message):
        body = S3_ERROR.format(code=code, message=message).encode()
        await self.answer(writer, status, reason, body, "application/xml")

    async def control(self, method, target, body, writer):
        path = target.split("?")[0]
        try:
            if path == "/__faults" and method == "GET":
                result = self.settings()
            elif path == "/__faults" and method == "POST":
                await self.apply(json.loads(body or b"{}"), writer)
                result = self.settings()
            elif path == "/__stats" and method == "GET":
                result = dict(self.stats)
            elif path == "/__stats/reset" and method == "POST":
                self.stats = dict.fromkeys(COUNTERS, 0)
                result = dict(self.stats)
            else:
                await self.answer(writer, 404, "Not Found", b"unknown control path\n")
                return
        except (ValueError, TypeError) as e:
            await self.answer(writer, 400, "Bad Request", f"{e}\n".encode())
            return
        data = (json.dumps(result, sort_keys=True) + "\n").encode()
        await self.answer(writer, 200, "OK", data, "application/json")


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstream", required=True, help="http://host:port of the S3 server")
    ap.add_argument("--listen", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="data port (0: any free one)")
    ap.add_argument("--control-port", type=int, default=0, help="control port (0: any free one)")
    ap.add_argument("--error500", type=float, default=0.0)
    ap.add_argument("--slowdown503", type=float, default=0.0)
    ap.add_argument("--latency-prob", type=float, default=0.0)
    ap.add_argument("--latency-ms", type=int, default=50)
    ap.add_argument("--reset-body", type=float, default=0.0)
    ap.add_argument("--drop-response", type=float, default=0.0)
    ap.add_argument("--drop-methods", default="PUT,POST")
    ap.add_argument("--outage", choices=("none", "reset", "refuse"), default="none")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    if args.listen not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("the fault proxy listens on the loopback interface only")

    proxy = Proxy(args)
    control = await asyncio.start_server(
        proxy.handle_control, args.listen, args.control_port, limit=HEAD_LIMIT, reuse_address=True
    )
    control_port = control.sockets[0].getsockname()[1]
    if proxy.outage != "refuse":
        await proxy.start_data()
    elif proxy.port == 0:
        sys.exit("--outage refuse at start needs a fixed --port")
    print(
        f"FAULT_PROXY data=http://{args.listen}:{proxy.port} "
        f"control=http://{args.listen}:{control_port}",
        flush=True,
    )
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
