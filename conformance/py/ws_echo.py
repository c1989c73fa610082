#!/usr/bin/env python3
"""WebSocket echo server and client for the Myelin test bed's L7 suite
(python3-websockets, asyncio API).

`server` prints one JSON "listening" line once bound, then echoes every message (text
or binary, as received) until killed; the handshake response carries `x-server: NAME`.
`client` opens one WebSocket (an HTTP/1.1 `Upgrade`), sends COUNT text messages, a
binary one of SIZE bytes and a close, checks every echo, prints one JSON line and exits
non-zero on any failure.
"""

import argparse
import asyncio
import json
import os
import sys

import websockets

TIMEOUT = 10.0


async def serve(args):
    async def echo(ws, path=None):  # `path` is passed by websockets < 10.1.
        async for message in ws:
            await ws.send(message)

    server = await websockets.serve(
        echo,
        "0.0.0.0",
        args.port,
        extra_headers={"x-server": args.name},
        max_size=None,
    )
    print(json.dumps({"listening": args.port, "name": args.name}), flush=True)
    await server.wait_closed()
    return 0


async def client(args):
    report = {"sent": 0, "echoed": 0, "problems": []}
    uri = f"ws://{args.target}/echo"
    async with websockets.connect(uri, max_size=None, open_timeout=TIMEOUT) as ws:
        report["server"] = ws.response_headers.get("x-server")
        for i in range(args.count):
            msg = f"message {i} through the mesh"
            await ws.send(msg)
            report["sent"] += 1
            got = await asyncio.wait_for(ws.recv(), TIMEOUT)
            if got == msg:
                report["echoed"] += 1
            else:
                report["problems"].append(f"message {i}: got {got!r:.80}")
        blob = os.urandom(args.size)
        await ws.send(blob)
        report["sent"] += 1
        got = await asyncio.wait_for(ws.recv(), TIMEOUT)
        if got == blob:
            report["echoed"] += 1
        else:
            report["problems"].append(f"binary message of {len(blob)} bytes: got {len(got)}")
        await ws.close()
        report["close_code"] = ws.close_code
    report["ok"] = (
        not report["problems"]
        and report["echoed"] == args.count + 1
        and report["close_code"] == 1000
    )
    print(json.dumps(report), flush=True)
    return 0 if report["ok"] else 1


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--name", required=True)
    c = sub.add_parser("client")
    c.add_argument("--target", required=True, help="HOST:PORT")
    c.add_argument("--count", type=int, default=5)
    c.add_argument("--size", type=int, default=256 * 1024)
    args = p.parse_args()
    return asyncio.run(serve(args) if args.cmd == "server" else client(args))


if __name__ == "__main__":
    sys.exit(main())
