#!/usr/bin/env python3
"""A local OTLP/HTTP trace receiver for benchmarks: accepts `POST /v1/traces` (protobuf or
JSON), answers 200 with an empty ExportTraceServiceResponse, and counts requests and bytes.
It decodes nothing, so its own CPU stays small next to what it measures.

    python3 scripts/otlp_sink.py PORT COUNTS_FILE

On SIGTERM or SIGINT it writes `requests=N bytes=M` to COUNTS_FILE and exits.
"""
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COUNTS = {"requests": 0, "bytes": 0}
LOCK = threading.Lock()


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        ok = self.path.rstrip("/").endswith("/v1/traces")
        if ok:
            with LOCK:
                COUNTS["requests"] += 1
                COUNTS["bytes"] += len(body)
        self.send_response(200 if ok else 404)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_):
        pass


def main():
    port, counts_file = int(sys.argv[1]), sys.argv[2]
    server = ThreadingHTTPServer(("127.0.0.1", port), Sink)

    def stop(*_):
        with LOCK, open(counts_file, "w") as f:
            f.write(f"requests={COUNTS['requests']} bytes={COUNTS['bytes']}\n")
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()


if __name__ == "__main__":
    main()
