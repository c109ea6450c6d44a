"""Sluice's webhooks verified by the reference implementations: the `standardwebhooks`
package and the `openai` SDK's `webhooks.verify_signature` / `unwrap`.

A local receiver fails the first attempt, so the retry (same `webhook-id`) is checked too.
The stack allowlists 127.0.0.1 for webhooks (scripts/sdk_test.sh).
"""

import json
import os
import threading
import time
import unittest
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer

import openai
import standardwebhooks

BASE = os.environ["SLUICE_SDK_BASE_URL"]
KEY = os.environ["SLUICE_SDK_KEY"]


class Receiver(BaseHTTPRequestHandler):
    got = []
    fail_first = 1

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        Receiver.got.append(({k.lower(): v for k, v in self.headers.items()}, body))
        status = 500 if len(Receiver.got) <= Receiver.fail_first else 200
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args):
        pass


def api(method, path, body=None):
    req = urllib.request.Request(
        BASE + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


class Webhooks(unittest.TestCase):
    def setUp(self):
        self.server = HTTPServer(("127.0.0.1", 0), Receiver)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        Receiver.got = []
        url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.endpoint = api("POST", "/webhooks", {"url": url, "events": ["job.completed"]})

    def tearDown(self):
        api("DELETE", f"/webhooks/{self.endpoint['id']}")
        self.server.shutdown()
        self.server.server_close()

    def test_signatures_verify_with_the_reference_implementations(self):
        secret = self.endpoint["secret"]
        client = openai.OpenAI(base_url=BASE, api_key=KEY, max_retries=0, webhook_secret=secret)
        done = client.chat.completions.create(
            model="sim-small", messages=[{"role": "user", "content": "ring the bell"}], max_tokens=8
        )
        self.assertTrue(done.choices[0].message.content)

        deadline = time.time() + 30
        while len(Receiver.got) < 2 and time.time() < deadline:
            time.sleep(0.05)
        self.assertEqual(len(Receiver.got), 2, "one failed attempt, one retry")
        (h1, b1), (h2, b2) = Receiver.got
        self.assertEqual(h1["webhook-id"], h2["webhook-id"], "retries keep the id")

        for headers, body in Receiver.got:
            payload = standardwebhooks.Webhook(secret).verify(body, headers)
            self.assertEqual(payload["type"], "job.completed")
            self.assertEqual(payload["id"], headers["webhook-id"])
            client.webhooks.verify_signature(body, headers)
            event = client.webhooks.unwrap(body, headers)
            self.assertEqual(event.type, "job.completed")

        with self.assertRaises(standardwebhooks.WebhookVerificationError):
            standardwebhooks.Webhook(secret).verify(b1 + b" ", h1)
        with self.assertRaises(openai.InvalidWebhookSignatureError):
            client.webhooks.verify_signature(b1, h1, secret="whsec_" + "A" * 43 + "=")


if __name__ == "__main__":
    unittest.main(verbosity=2)
