#!/usr/bin/env python3
"""Tiny capture server for the arklet HTTP heartbeat (stdlib only).

Listens on 127.0.0.1:7777 (or --port), answers every POST with 200 "SUCCESS" (like the Go controller) and prints
one JSON line per request: {"t": epoch_s, "method", "path", "headers": {...}, "body": <parsed JSON or text>}.

    python3 hack/java/capture-listener.py --port 7777 > /tmp/heartbeats.jsonl
"""
import argparse
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _capture(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        rec = {"t": round(time.time(), 3), "method": self.command, "path": self.path,
               "headers": dict(self.headers.items()), "body": body}
        sys.stdout.write(json.dumps(rec, sort_keys=True) + "\n")
        sys.stdout.flush()
        out = b"SUCCESS"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_POST = do_GET = do_PUT = _capture

    def log_message(self, *args):
        pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=7777)
    a = ap.parse_args()
    ThreadingHTTPServer((a.host, a.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
