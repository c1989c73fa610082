#!/usr/bin/env python3
"""Blocking Python client for the Myelin test bed.

Mirrors `myelin-podtool exchange` and `myelin-podtool stream`: plain `socket`,
blocking, no timeout, like an ordinary Python application. Prints one JSON line
with the same fields as podtool and exits non-zero on any error. EAGAIN from a
blocking socket (BlockingIOError) is recorded with its errno and retried a
bounded number of times, as podtool does.

The byte pattern is the one in conformance/src/pattern.rs; keep them in step.
"""

import argparse
import errno
import json
import socket
import struct
import sys
import threading
import time

BLOCK = 1024
HEADER = 8
STREAM_SEED = 0xAB
MAX_EXCHANGE_SIZE = 256 * 1024
MAX_EAGAIN_RETRIES = 1000
CHUNK = 64 * 1024


def _table():
    x = 0x9E3779B9
    out = bytearray(2048)
    for i in range(2048):
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        out[i] = (x >> 11) & 0xFF
    return bytes(out)


TABLE = _table()


def block(seed, b):
    start = (b * 7 + seed * 13) % 1024
    header = struct.pack("<Q", ((seed << 40) ^ b) & 0xFFFFFFFFFFFFFFFF)
    return header + TABLE[start:start + BLOCK - HEADER]


def pattern(seed, offset, length):
    """`length` bytes of stream `seed` from `offset`."""
    first, last = offset // BLOCK, (offset + length + BLOCK - 1) // BLOCK
    data = b"".join(block(seed, b) for b in range(first, last))
    skip = offset - first * BLOCK
    return data[skip:skip + length]


class Failure(Exception):
    def __init__(self, info):
        super().__init__(info["message"])
        self.info = info


class Stats:
    def __init__(self):
        self.eagain = 0
        self.failures = 0
        self.first_error = None
        self.lock = threading.Lock()

    def record(self, info):
        with self.lock:
            if info.get("errno") == errno.EAGAIN:
                self.eagain += 1
            else:
                self.failures += 1
            if self.first_error is None:
                self.first_error = info

    def clean(self):
        return self.eagain == 0 and self.failures == 0


def os_error(op, e, at):
    code = e.errno
    name = errno.errorcode.get(code, "errno %s" % code) if code is not None else type(e).__name__
    if code == errno.EAGAIN:
        name = "EAGAIN"  # errorcode may say EWOULDBLOCK; same value on Linux
    return {"op": op, "kind": name, "errno": code, "message": str(e), "at": at}


def protocol(op, kind, message, at):
    return {"op": op, "kind": kind, "errno": None, "message": message, "at": at}


def retrying(op, fn, stats, at):
    retries = 0
    while True:
        try:
            return fn()
        except InterruptedError:
            continue
        except BlockingIOError as e:
            info = os_error(op, e, at)
            if retries >= MAX_EAGAIN_RETRIES:
                raise Failure(info)
            stats.record(info)
            retries += 1
            time.sleep(0.001)
        except OSError as e:
            raise Failure(os_error(op, e, at))


def send_all(sock, data, stats, at):
    view = memoryview(data)
    while view:
        n = retrying("write", lambda: sock.send(view), stats, at)
        view = view[n:]


def recv_exact(sock, n, stats, at):
    buf = bytearray()
    while len(buf) < n:
        chunk = retrying("read", lambda: sock.recv(n - len(buf)), stats, at)
        if not chunk:
            raise Failure(protocol("read", "EOF", "EOF after %d of %d bytes" % (len(buf), n), at))
        buf += chunk
    return bytes(buf)


def connect(addr):
    host, _, port = addr.rpartition(":")
    try:
        return socket.create_connection((host, int(port)))
    except OSError as e:
        raise Failure(os_error("connect", e, 0))


def exchange(args):
    start = time.monotonic()
    stats = Stats()
    ok = 0
    try:
        if not 0 < args.size <= MAX_EXCHANGE_SIZE:
            raise Failure(protocol("args", "EINVAL", "--size must be 1..=%d" % MAX_EXCHANGE_SIZE, 0))
        sock = connect(args.addr)
        for k in range(args.count):
            before = (stats.eagain, stats.failures)
            msg = pattern(k, 0, args.size)
            send_all(sock, msg, stats, k)
            reply = recv_exact(sock, args.size, stats, k)
            if reply != msg:
                i = next(i for i, (a, b) in enumerate(zip(reply, msg)) if a != b)
                stats.record(protocol("check", "MISMATCH", "reply byte %d differs" % i, k))
            elif before == (stats.eagain, stats.failures):
                ok += 1
        sock.close()
    except Failure as f:
        stats.record(f.info)
    report = {
        "mode": "exchange",
        "client": "python",
        "ok": ok,
        "errors": args.count - ok,
        "eagain": stats.eagain,
        "first_error": stats.first_error,
        "secs": time.monotonic() - start,
    }
    return report, ok == args.count and stats.clean()


def stream(args):
    start = time.monotonic()
    stats = Stats()
    total = args.bytes
    received = 0
    sent = [0]
    mismatch_at = None
    try:
        sock = connect(args.addr)

        def writer():
            off = 0
            try:
                while off < total:
                    n = min(CHUNK, total - off)
                    send_all(sock, pattern(STREAM_SEED, off, n), stats, off)
                    off += n
                sock.shutdown(socket.SHUT_WR)
            except Failure as f:
                stats.record(f.info)
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wake the reader
                except OSError:
                    pass
            except OSError as e:
                stats.record(os_error("shutdown", e, off))
            sent[0] = off

        t = threading.Thread(target=writer)
        t.start()
        try:
            while True:
                chunk = retrying("read", lambda: sock.recv(CHUNK), stats, received)
                if not chunk:
                    break
                if mismatch_at is None:
                    want = pattern(STREAM_SEED, received, max(0, min(len(chunk), total - received)))
                    if chunk != want:
                        i = next((i for i, (a, b) in enumerate(zip(chunk, want)) if a != b), len(want))
                        mismatch_at = received + i
                        stats.record(protocol("check", "MISMATCH",
                                              "echoed byte %d differs (or is beyond %d)" % (mismatch_at, total),
                                              mismatch_at))
                received += len(chunk)
        except Failure as f:
            stats.record(f.info)
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wake the writer
            except OSError:
                pass
        t.join()
        sock.close()
        if received < total and stats.clean():
            stats.record(protocol("read", "EOF", "EOF after %d of %d bytes" % (received, total), received))
    except Failure as f:
        stats.record(f.info)
    secs = time.monotonic() - start
    good = stats.clean() and received == total and sent[0] == total
    report = {
        "mode": "stream",
        "client": "python",
        "ok": good,
        "bytes": total,
        "sent": sent[0],
        "received": received,
        "mismatch_at": mismatch_at,
        "eagain": stats.eagain,
        "errors": stats.failures,
        "first_error": stats.first_error,
        "secs": secs,
        "mbit_per_s": received * 8 / 1e6 / max(secs, 1e-9),
    }
    return report, good


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)
    e = sub.add_parser("exchange")
    e.add_argument("--addr", required=True)
    e.add_argument("--count", type=int, default=1)
    e.add_argument("--size", type=int, default=1024)
    s = sub.add_parser("stream")
    s.add_argument("--addr", required=True)
    s.add_argument("--bytes", type=int, required=True)
    args = p.parse_args()
    report, good = exchange(args) if args.mode == "exchange" else stream(args)
    print(json.dumps(report), flush=True)
    sys.exit(0 if good else 1)


if __name__ == "__main__":
    main()
