#!/usr/bin/env python3
"""gRPC server and client for the Myelin test bed's L7 suite (python3-grpcio).

No generated stubs, so no protoc: the methods are registered with generic handlers and
the messages are raw bytes (identity serializers). Service `myelin.test.Echo`:

- `Unary`: replies `<server name>:<request>`.
- `Fail`: ends the call with status NOT_FOUND and details `<server name>: no such thing`
  (a trailers-only response: the status in the response headers, no message).
- `Stream` (bidirectional): replies `<server name>:<message>` to each message as it
  arrives, so the client can check the interleaving (it waits for each reply before
  sending the next message).

`server` prints one JSON "listening" line once bound, then serves until killed.
`client` makes its calls on ONE channel (one HTTP/2 connection), prints one JSON line
and exits non-zero on any failure. Modes:

- `unary`: one call, checks the echo.
- `error`: one call to `Fail`, checks that the status and details came through.
- `unavailable`: one call to `Unary` that must fail with UNAVAILABLE (no server behind the
  mesh); reports the details the client was given.
- `stream`: one bidirectional stream of COUNT messages, each reply checked in order.
- `balance`: COUNT unary calls, PARALLEL at a time (1: one after the other); reports how
  many each server answered.
"""

import argparse
import collections
import json
import queue
import sys
from concurrent import futures

import grpc

SERVICE = "myelin.test.Echo"
UNARY = f"/{SERVICE}/Unary"
FAIL = f"/{SERVICE}/Fail"
STREAM = f"/{SERVICE}/Stream"
TIMEOUT = 10.0


def identity(b):
    return b


def serve(args):
    name = args.name.encode()

    def unary(request, context):
        return name + b":" + request

    def fail(request, context):
        context.abort(grpc.StatusCode.NOT_FOUND, f"{args.name}: no such thing")

    def stream(requests, context):
        for message in requests:
            yield name + b":" + message

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(
                unary, request_deserializer=identity, response_serializer=identity
            ),
            "Fail": grpc.unary_unary_rpc_method_handler(
                fail, request_deserializer=identity, response_serializer=identity
            ),
            "Stream": grpc.stream_stream_rpc_method_handler(
                stream, request_deserializer=identity, response_serializer=identity
            ),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"0.0.0.0:{args.port}")
    if port == 0:
        print(json.dumps({"error": f"could not bind port {args.port}"}), flush=True)
        return 1
    server.start()
    print(json.dumps({"listening": port, "name": args.name}), flush=True)
    server.wait_for_termination()
    return 0


def channel(target):
    # One channel is one subchannel (pick_first) and so one HTTP/2 connection. No proxy
    # from the environment: the mesh is the only thing between client and server.
    return grpc.insecure_channel(f"ipv4:{target}", options=[("grpc.enable_http_proxy", 0)])


def unary_call(ch):
    call = ch.unary_unary(UNARY, request_serializer=identity, response_deserializer=identity)
    reply = call(b"hello", timeout=TIMEOUT)
    server, _, echoed = reply.partition(b":")
    ok = echoed == b"hello" and server != b""
    return ok, {"reply": reply.decode(errors="replace")}


def failing_call(ch, method, want_code):
    """One call that must fail with `want_code`: (ok, the code and details it got)."""
    call = ch.unary_unary(method, request_serializer=identity, response_deserializer=identity)
    try:
        reply = call(b"x", timeout=TIMEOUT)
    except grpc.RpcError as e:
        code, details = e.code().name, e.details()
        return code == want_code, {"code": code, "details": details}
    return False, {"reply": reply.decode(errors="replace")}


def error_call(ch):
    ok, extra = failing_call(ch, FAIL, "NOT_FOUND")
    return ok and extra.get("details", "").endswith(": no such thing"), extra


def stream_call(ch, count):
    call = ch.stream_stream(STREAM, request_serializer=identity, response_deserializer=identity)
    # Requests come from a queue fed after each reply: a true ping-pong over one stream,
    # which a proxy that buffered the request stream until its end would deadlock.
    outbox = queue.Queue()

    def requests():
        while True:
            item = outbox.get()
            if item is None:
                return
            yield item

    outbox.put(b"msg-0")
    replies = call(requests(), timeout=TIMEOUT)
    got, servers, problems = 0, set(), []
    for i, reply in enumerate(replies):
        server, _, echoed = reply.partition(b":")
        servers.add(server.decode(errors="replace"))
        if echoed != f"msg-{i}".encode():
            problems.append(f"reply {i} was {reply!r}")
        got += 1
        outbox.put(f"msg-{i + 1}".encode() if got < count else None)
    ok = got == count and not problems and len(servers) == 1
    return ok, {"replies": got, "servers": sorted(servers), "problems": problems[:5]}


def balance(ch, count, parallel):
    call = ch.unary_unary(UNARY, request_serializer=identity, response_deserializer=identity)
    per_server = collections.Counter()
    errors = []
    # Waves of `parallel` calls in flight at once, all multiplexed on the one connection.
    for wave in range(0, count, parallel):
        calls = [
            (i, call.future(f"call-{i}".encode(), timeout=TIMEOUT))
            for i in range(wave, min(wave + parallel, count))
        ]
        for i, fut in calls:
            try:
                reply = fut.result()
            except grpc.RpcError as e:
                errors.append(f"call {i}: {e.code()} {e.details()}")
                continue
            server, _, echoed = reply.partition(b":")
            if echoed != f"call-{i}".encode():
                errors.append(f"call {i}: reply {reply!r}")
                continue
            per_server[server.decode(errors="replace")] += 1
    return not errors, {"per_server": dict(per_server), "errors": errors[:5], "error_count": len(errors)}


def client(args):
    report = {"mode": args.mode}
    try:
        with channel(args.target) as ch:
            if args.mode == "unary":
                ok, extra = unary_call(ch)
            elif args.mode == "error":
                ok, extra = error_call(ch)
            elif args.mode == "unavailable":
                ok, extra = failing_call(ch, UNARY, "UNAVAILABLE")
            elif args.mode == "stream":
                ok, extra = stream_call(ch, args.count)
            else:
                ok, extra = balance(ch, args.count, args.parallel)
    except grpc.RpcError as e:
        ok, extra = False, {"error": f"{e.code()} {e.details()}"}
    report.update(extra)
    report["ok"] = ok
    print(json.dumps(report), flush=True)
    return 0 if ok else 1


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--name", required=True)
    c = sub.add_parser("client")
    c.add_argument("--target", required=True, help="HOST:PORT")
    c.add_argument("--mode", choices=["unary", "error", "unavailable", "stream", "balance"], required=True)
    c.add_argument("--count", type=int, default=10)
    c.add_argument("--parallel", type=int, default=1, help="balance: calls in flight at once")
    args = p.parse_args()
    return serve(args) if args.cmd == "server" else client(args)


if __name__ == "__main__":
    sys.exit(main())
