"""A tiny HTTP backend for `lb demo`: answers every GET with its own name."""

import argparse
import http.server


def serve(port: int, name: str) -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            # the client's address, as lb's http mode passes it on
            client = self.headers.get("X-Forwarded-For", self.client_address[0])
            body = f"hello from {name} (to {client})\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Backend", name)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    # the parent learns the port (0 = any free one) from this line
    print(f"ready {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--name", required=True)
    args = ap.parse_args()
    try:
        serve(args.port, args.name)
    except KeyboardInterrupt:
        pass
