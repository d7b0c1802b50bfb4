"""A real webhook receiver for tests/webhooks.rs.

Verifies every delivery's signature with the Standard Webhooks reference library
(PyPI `standardwebhooks`), answers from a per-path script and appends one JSON line per
delivery to a log, written when the request arrives (so a test sees a delivery it is about to
interrupt).

usage: webhook_receiver.py SECRET LOG PATH=ANSWERS [PATH=ANSWERS ...]
  ANSWERS: comma-separated, one per delivery to PATH in order: an HTTP status, or `hang:S`
  (answer nothing for S seconds, then 500). Deliveries beyond the script get 200.
Prints `listening on PORT` once it accepts connections.
"""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook, WebhookVerificationError

SECRET, LOG = sys.argv[1], sys.argv[2]
SCRIPT = {p: a.split(",") for p, a in (arg.split("=", 1) for arg in sys.argv[3:])}
WEBHOOK = Webhook(SECRET)
LOCK = threading.Lock()
COUNTS = {}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k: v for k, v in self.headers.items()}
        try:
            WEBHOOK.verify(body, headers)
            verified, error = True, None
        except WebhookVerificationError as e:
            verified, error = False, str(e)
        with LOCK:
            n = COUNTS.get(self.path, 0)
            COUNTS[self.path] = n + 1
            script = SCRIPT.get(self.path, [])
            answer = script[n] if n < len(script) else "200"
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
            record = {
                "path": self.path,
                "n": n + 1,
                "at": time.time(),
                "verified": verified,
                "error": error,
                "id": headers.get("webhook-id") or headers.get("Webhook-Id"),
                "timestamp": headers.get("webhook-timestamp") or headers.get("Webhook-Timestamp"),
                "body": parsed,
                "answer": answer,
            }
            with open(LOG, "a") as f:
                f.write(json.dumps(record) + "\n")
        if answer.startswith("hang:"):
            time.sleep(float(answer.split(":", 1)[1]))
            answer = "500"
        # A signature that does not verify is refused whatever the script says.
        status = int(answer) if verified else 400
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(f"listening on {server.server_address[1]}", flush=True)
server.serve_forever()
