"""Unit tests of payment_worker.py: each kind of payment-service answer ends the task as the
checkout's in-process step would (`call` in examples/checkout/workflow.rs), and the request
carries the task's idempotency key. A real HTTP server on loopback stands in for the payment
service. Run: `python3 -m unittest examples/workers/python/test_payment_worker.py` (also run
by tests/checkout_payment_queue.rs).
"""

import importlib.util
import json
import os
import threading
import unittest
from http.server import BaseHTTPRequestHandler, HTTPServer

_spec = importlib.util.spec_from_file_location(
    "payment_worker", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                   "payment_worker.py"))
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)

# Path → (status, body) the stand-in service answers.
ANSWERS = {
    "/ok/charges": (200, b'{"charge_id": "CH-order-1", "amount_cents": 1299}'),
    "/declined/charges": (402, b'{"error": "card declined"}'),
    "/bad-request/charges": (400, b"not json"),
    "/down/charges": (503, b'{"error": "payment service outage"}'),
    "/timeout/charges": (408, b""),
    "/busy/charges": (429, b""),
    "/garbled/charges": (200, b"{not json"),
    "/wrong-shape/charges": (200, b'{"charge": 1}'),
}


class Service(BaseHTTPRequestHandler):
    seen = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        Service.seen.append((self.path, self.headers, json.loads(body)))
        status, answer = ANSWERS[self.path]
        self.send_response(status)
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


class ChargeTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = HTTPServer(("127.0.0.1", 0), Service)
        threading.Thread(target=cls.server.serve_forever, daemon=True).start()

    @classmethod
    def tearDownClass(cls):
        cls.server.shutdown()
        cls.server.server_close()

    def charge(self, path, step=worker.STEP):
        task = {
            "id": "order-1:0:9:1",
            "step": step,
            "idempotency_key": "order-1/9",
            "input": {
                "payment_url": "http://127.0.0.1:%d/%s" % (self.server.server_port, path),
                "charge": {"order": "order-1", "card": "4242", "amount_cents": 1299},
            },
        }
        return worker.charge(task, "py-test", 5)

    def test_a_charge_completes_with_the_steps_output(self):
        Service.seen.clear()
        self.assertEqual(self.charge("ok"),
                         ("complete", {"charge_id": "CH-order-1", "amount_cents": 1299}))
        path, headers, body = Service.seen[0]
        self.assertEqual(path, "/ok/charges")
        self.assertEqual(headers["idempotency-key"], "order-1/9")
        self.assertEqual(headers["orch-node"], "py-test")
        self.assertEqual(body, {"order": "order-1", "card": "4242", "amount_cents": 1299})

    def test_a_client_error_fails_for_good_with_the_services_message(self):
        self.assertEqual(self.charge("declined"), ("fail", "card declined", False))
        self.assertEqual(self.charge("bad-request"),
                         ("fail", "payment answered 400 Bad Request", False))

    def test_server_errors_408_and_429_are_retryable(self):
        self.assertEqual(self.charge("down"), ("fail", "payment service outage", True))
        self.assertEqual(self.charge("timeout")[2], True)
        self.assertEqual(self.charge("busy")[2], True)

    def test_an_answer_that_is_not_a_charge_is_retryable(self):
        for path in ("garbled", "wrong-shape"):
            kind, message, retryable = self.charge(path)
            self.assertEqual((kind, retryable), ("fail", True), path)
            self.assertIn("bad answer", message)

    def test_an_unreachable_service_is_retryable(self):
        task = {"id": "t", "step": worker.STEP, "idempotency_key": "k/1",
                "input": {"payment_url": "http://127.0.0.1:1", "charge": {}}}
        kind, message, retryable = worker.charge(task, "py-test", 5)
        self.assertEqual((kind, retryable), ("fail", True))
        self.assertIn("http://127.0.0.1:1/charges", message)

    def test_a_task_it_cannot_run_is_refused_with_why(self):
        kind, message, retryable = self.charge("ok", step="ship_order")
        self.assertEqual((kind, retryable), ("fail", True))
        self.assertIn("`ship_order`", message)
        task = {"id": "t", "step": worker.STEP, "idempotency_key": "k/1", "input": [1]}
        kind, message, retryable = worker.charge(task, "py-test", 5)
        self.assertEqual((kind, retryable), ("fail", False))
        self.assertIn("payment_url", message)

    def test_a_failure_message_fits_the_protocols_limit(self):
        clipped = worker.clip("é" * 70000 + "\0")
        self.assertLessEqual(len(clipped.encode("utf-8")), 64 * 1024)
        self.assertNotIn("\0", worker.clip("a\0b"))


if __name__ == "__main__":
    unittest.main()
