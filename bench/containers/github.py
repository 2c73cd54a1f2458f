#!/usr/bin/env python3
"""The two GitHub routes a deployment uses, for the container benchmark: the manifest through
the contents API, and deployment statuses (each POST's arrival time is kept, in ms since the
epoch, at GET /_statuses/{id}). Usage: github.py PORT MANIFEST"""
import base64, json, socket, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, manifest = int(sys.argv[1]), open(sys.argv[2], "rb").read()
statuses, lock = {}, threading.Lock()

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        # Headers and body go out in two writes: without this, Nagle's algorithm and the
        # client's delayed ACK add 40 ms to some answers.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if "/contents/dropship.yml" in self.path:
            self.reply(200, {"type": "file", "encoding": "base64", "name": "dropship.yml",
                             "path": "dropship.yml", "size": len(manifest),
                             "content": base64.b64encode(manifest).decode()})
        elif self.path.startswith("/_statuses/"):
            with lock:
                self.reply(200, statuses.get(self.path.rsplit("/", 1)[1], []))
        else:
            self.reply(404, {"message": "Not Found"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        deployment = self.path.split("/deployments/")[1].split("/")[0]
        with lock:
            statuses.setdefault(deployment, []).append([body["state"], time.time() * 1000])
        self.reply(201, {"id": 1, "state": body["state"]})

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
