#!/usr/bin/env python3
"""WebSocket over HTTP/2 client (RFC 8441 extended CONNECT) for the Myelin test bed's L7
suite, on python3-h2 (the HTTP/2 state machine of httpx and hypercorn).

`client` opens one h2c connection (prior knowledge), waits for the server's SETTINGS, sends
a CONNECT with `:protocol: websocket` on stream 1 and, once answered 200, speaks WebSocket
(RFC 6455 frames, masked as a client must) in the stream's DATA: COUNT text messages, one
binary message of SIZE bytes and a close, checking every echo. The server's close frame is
answered by ending the stream; the report says whether the server's side of the stream
ended too. Prints one JSON line and exits non-zero on any failure. The server is
`ws_echo.py server` (an HTTP/1.1 WebSocket server): the proxy in between does the
translation.
"""

import argparse
import json
import os
import socket
import sys

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

TIMEOUT = 10.0
STREAM = 1
TEXT, BINARY, CLOSE = 0x1, 0x2, 0x8


def ws_frame(opcode, payload):
    """One final, masked frame."""
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    if n == 0:
        return head + mask
    key = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return head + mask + masked


def ws_parse(buf):
    """(opcode, payload, rest) of the first whole frame in buf, or None. A server's frames
    are not masked; fragmented messages are not expected from the echo server."""
    if len(buf) < 2:
        return None
    b0, b1 = buf[0], buf[1]
    if b1 & 0x80:
        raise ValueError("a masked frame from the server")
    if not b0 & 0x80:
        raise ValueError("a fragmented message")
    n, at = b1 & 0x7F, 2
    if n == 126:
        if len(buf) < 4:
            return None
        n, at = int.from_bytes(buf[2:4], "big"), 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n, at = int.from_bytes(buf[2:10], "big"), 10
    if len(buf) < at + n:
        return None
    return b0 & 0x0F, bytes(buf[at : at + n]), buf[at + n :]


class Client:
    def __init__(self, target):
        host, port = target.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.conn.initiate_connection()
        self.flush()
        self.settings_seen = False
        self.connect_enabled = False
        self.status = None
        self.headers = {}
        self.ended = False
        self.reset = None
        self.buf = bytearray()

    def flush(self):
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(out)

    def pump(self):
        """Reads once and handles what came."""
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the proxy closed the connection")
        for ev in self.conn.receive_data(data):
            if isinstance(ev, h2.events.RemoteSettingsChanged):
                self.settings_seen = True
                c = ev.changed_settings.get(h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL)
                if c is not None:
                    self.connect_enabled = c.new_value == 1
            elif isinstance(ev, h2.events.ResponseReceived):
                self.headers = dict(ev.headers)
                self.status = int(self.headers.get(":status", "0"))
            elif isinstance(ev, h2.events.DataReceived):
                self.buf += ev.data
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                self.ended = True
            elif isinstance(ev, h2.events.StreamReset):
                self.reset = ev.error_code
            elif isinstance(ev, h2.events.ConnectionTerminated):
                raise ConnectionError(f"GOAWAY {ev.error_code}")
        self.flush()

    def send(self, data, end=False):
        """Sends data on the stream within the flow-control windows."""
        view = memoryview(data)
        while view:
            room = min(
                self.conn.local_flow_control_window(STREAM), self.conn.max_outbound_frame_size
            )
            if room <= 0:
                self.pump()
                continue
            self.conn.send_data(STREAM, bytes(view[:room]))
            view = view[room:]
            self.flush()
        if end:
            self.conn.end_stream(STREAM)
            self.flush()

    def message(self):
        """The next whole WebSocket frame from the server."""
        while True:
            got = ws_parse(self.buf)
            if got:
                op, payload, rest = got
                self.buf = bytearray(rest)
                return op, payload
            if self.ended or self.reset is not None:
                raise ConnectionError(f"the stream ended (reset {self.reset})")
            self.pump()


def client(args):
    report = {"sent": 0, "echoed": 0, "problems": []}
    c = Client(args.target)
    while not c.settings_seen:
        c.pump()
    report["connect_protocol_enabled"] = c.connect_enabled
    c.conn.send_headers(
        STREAM,
        [
            (":method", "CONNECT"),
            (":protocol", "websocket"),
            (":scheme", "http"),
            (":path", "/echo"),
            (":authority", args.target),
            ("sec-websocket-version", "13"),
        ],
    )
    c.flush()
    while c.status is None and c.reset is None:
        c.pump()
    report["status"] = c.status
    report["reset"] = c.reset
    report["server"] = c.headers.get("x-server")
    report["upgrade_headers"] = sorted(
        k for k in c.headers if k in ("upgrade", "connection", "sec-websocket-accept")
    )
    if c.status != 200:
        report["ok"] = False
        print(json.dumps(report), flush=True)
        return 1
    messages = [(TEXT, f"message {i} through the mesh".encode()) for i in range(args.count)]
    messages.append((BINARY, os.urandom(args.size)))
    for op, payload in messages:
        c.send(ws_frame(op, payload))
        report["sent"] += 1
        got_op, got = c.message()
        if (got_op, got) == (op, payload):
            report["echoed"] += 1
        else:
            report["problems"].append(f"sent {op}/{len(payload)}, got {got_op}/{len(got)}")
    c.send(ws_frame(CLOSE, (1000).to_bytes(2, "big")))
    op, payload = c.message()
    report["close_code"] = int.from_bytes(payload[:2], "big") if op == CLOSE else None
    # The server closes its connection after the close handshake, which the proxy passes on
    # as the end of the stream (END_STREAM, maybe already here, perhaps followed by a
    # RST_STREAM NO_ERROR); our side ends too unless the stream is closed already.
    if c.reset is None:
        try:
            c.send(b"", end=True)
        except h2.exceptions.StreamClosedError:
            pass
    while not c.ended and c.reset is None:
        c.pump()
    report["stream_ended"] = c.ended
    report["reset_code"] = c.reset
    report["ok"] = (
        not report["problems"]
        and report["echoed"] == args.count + 1
        and report["close_code"] == 1000
        and report["stream_ended"]
    )
    print(json.dumps(report), flush=True)
    return 0 if report["ok"] else 1


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("client")
    c.add_argument("--target", required=True, help="HOST:PORT")
    c.add_argument("--count", type=int, default=5)
    c.add_argument("--size", type=int, default=256 * 1024)
    args = p.parse_args()
    return client(args)


if __name__ == "__main__":
    sys.exit(main())
