#!/usr/bin/env python3
"""A payment worker for the checkout example, in Python with the standard library only.

It serves queue `payments` of an orch server through the HTTP worker protocol
(`/api/v1/tasks`, see docs/http-api.md#workers): long-polls for tasks, keeps each lease
alive with heartbeats while it works, charges the card by calling the payment service named
in the task (with the task's idempotency key, so a charge is applied once however often it is
sent), and ends the task with the charge or a failure.

    cargo run --example checkout -- --payment-queue          # prints the URL to give here
    python3 examples/workers/python/payment_worker.py --url http://127.0.0.1:8080/

Each task of step `charge_payment_queued` has the input
`{"payment_url": "http://127.0.0.1:41003", "charge": {"order", "card", "amount_cents"}}`;
the worker POSTs `charge` to `<payment_url>/charges` with the headers `idempotency-key` (the
task's `idempotency_key`) and `orch-node` (this worker's name, written to the service log),
as the in-process step does. Then, like that step:

- 2xx: the task completes with the service's answer, the step's `Charge`
  (`{"charge_id", "amount_cents"}`);
- 4xx other than 408 and 429 (402 "card declined"): the task fails for good
  (`retryable: false`; the checkout releases the stock);
- 5xx, 408, 429, a connection failure, a timeout or an unreadable answer: the task fails
  retryably, and the step's retry policy makes another attempt (with the same key).

A heartbeat or end answered 409 `task_lost` means the lease ended (this worker stalled) and
the task may be another worker's now: the task is dropped, nothing more is sent for it.
While the orch server cannot be reached the worker retries with a growing pause (up to 10 s).
Ctrl-C or SIGTERM: it stops asking for tasks, finishes those it holds and exits (0); a second
one exits at once. Exits 2 when the server refuses the worker's requests for good (a bad
token, a bad URL); the message says what to change.
"""

import argparse
import http.client
import json
import os
import random
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

# The step this worker runs, and its queue (the checkout example's `charge_payment_queued`).
STEP = "charge_payment_queued"
DEFAULT_QUEUE = "payments"
# Longest pause between attempts to reach the orch server.
MAX_BACKOFF_S = 10.0

# Set once: stop asking for tasks (Ctrl-C, SIGTERM, or a fatal error).
stop = threading.Event()
# Why the worker stops on its own (a fatal error), if it does.
fatal = []
print_lock = threading.Lock()
# Straight to the servers, as the checkout's own HTTP client: no proxy from the environment.
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def say(worker, message):
    """One line on stderr, whole even when threads write at once."""
    with print_lock:
        sys.stderr.write("payment-worker %s: %s\n" % (worker, message))
        sys.stderr.flush()


class Unreachable(Exception):
    """The server could not be reached, or did not answer in time."""


class ApiError(Exception):
    """The server answered with an error status."""

    def __init__(self, status, code, message):
        Exception.__init__(self, "%s %s: %s" % (status, code, message))
        self.status = status
        self.code = code
        self.message = message


class Orch:
    """The orch server's worker protocol."""

    def __init__(self, base, token):
        self.base = base
        self.token = token

    def post(self, path, body, timeout):
        """POSTs `body` as JSON; the answer's JSON, or ApiError / Unreachable."""
        request = urllib.request.Request(
            self.base + path,
            data=json.dumps(body).encode("utf-8"),
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            method="POST",
        )
        if self.token:
            request.add_header("Authorization", "Bearer " + self.token)
        try:
            with opener.open(request, timeout=timeout) as response:
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            code, message = "http_%d" % e.code, e.reason
            try:
                error = json.loads(e.read().decode("utf-8")).get("error")
                if isinstance(error, dict):
                    code = error.get("code", code)
                    message = error.get("message", message)
                elif isinstance(error, str):
                    message = error
            except (ValueError, AttributeError, OSError):
                pass
            raise ApiError(e.code, code, message)
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
            # (OSError covers refused and reset connections and socket timeouts, HTTPException
            # a connection cut mid-answer, ValueError a body that is not JSON, e.g. from a
            # proxy in between.)
            reason = getattr(e, "reason", e)
            raise Unreachable("%s: %s" % (self.base + path, reason))

    def lease(self, worker, queues, wait_ms, lease_ms):
        body = {
            "worker": worker,
            "queues": queues,
            "max_tasks": 1,
            "wait_ms": wait_ms,
            "lease_ms": lease_ms,
        }
        # The long-poll answers within wait_ms; the margin covers a slow server.
        answer = self.post("/api/v1/tasks/lease", body, timeout=wait_ms / 1000.0 + 15)
        return answer.get("tasks", [])

    def task_path(self, task, action):
        # A child instance's id holds `/`: percent-encode it in the path.
        return "/api/v1/tasks/%s/%s" % (urllib.parse.quote(task["id"], safe=":"), action)

    def heartbeat(self, task, lease_ms):
        body = {"token": task["token"], "lease_ms": lease_ms}
        return self.post(self.task_path(task, "heartbeat"), body, timeout=10)

    def end(self, task, action, body):
        body = dict(body, token=task["token"])
        return self.post(self.task_path(task, action), body, timeout=10)


class Backoff:
    """A growing pause (with jitter) while the server cannot be reached."""

    def __init__(self):
        self.delay = 0.0

    def reset(self):
        self.delay = 0.0

    def next(self):
        """The next pause, in seconds."""
        self.delay = min(MAX_BACKOFF_S, max(0.25, self.delay * 2))
        return self.delay * (0.75 + random.random() / 2)

    def pause(self):
        """Sleeps the next pause, or less if the worker is stopping."""
        stop.wait(self.next())


def charge(task, worker, service_timeout):
    """Runs one task: ("complete", output) or ("fail", message, retryable)."""
    if task.get("step") != STEP:
        # Another step on this queue: another worker may have it (as the Rust worker does).
        return ("fail", "this payment worker runs step `%s` only, not `%s`"
                % (STEP, task.get("step")), True)
    data = task.get("input")
    url = data.get("payment_url") if isinstance(data, dict) else None
    body = data.get("charge") if isinstance(data, dict) else None
    if (not isinstance(url, str) or not url.startswith(("http://", "https://"))
            or not isinstance(body, dict)):
        return ("fail", "the task's input is not {\"payment_url\": \"http://…\", \"charge\": "
                "{…}} (got %s); is this the checkout example's queue?"
                % json.dumps(data)[:200], False)
    request = urllib.request.Request(
        url.rstrip("/") + "/charges",
        data=json.dumps(body).encode("utf-8"),
        headers={
            "Content-Type": "application/json",
            "idempotency-key": task["idempotency_key"],
            "orch-node": worker,
        },
        method="POST",
    )
    try:
        with opener.open(request, timeout=service_timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as e:
        try:
            answer = json.loads(e.read().decode("utf-8"))
        except (ValueError, OSError, http.client.HTTPException):
            answer = None
        message = answer.get("error") if isinstance(answer, dict) else None
        if not isinstance(message, str):
            message = "payment answered %d %s" % (e.code, e.reason)
        # As the in-process step: a 4xx is final (a declined card), except 408 and 429.
        retryable = not (400 <= e.code < 500) or e.code in (408, 429)
        return ("fail", message, retryable)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        return ("fail", "payment: %s: %s" % (request.full_url, getattr(e, "reason", e)), True)
    # The answer must be the step's `Charge`, as the in-process step decodes it.
    try:
        output = json.loads(raw.decode("utf-8"))
    except ValueError as e:
        return ("fail", "payment: bad answer: %s" % e, True)
    if not (isinstance(output, dict) and isinstance(output.get("charge_id"), str)
            and isinstance(output.get("amount_cents"), int)
            and not isinstance(output.get("amount_cents"), bool)
            and output["amount_cents"] >= 0):
        return ("fail", "payment: bad answer: not a charge {\"charge_id\", \"amount_cents\"}: "
                "%s" % raw[:200].decode("utf-8", "replace"), True)
    return ("complete", {"charge_id": output["charge_id"],
                         "amount_cents": output["amount_cents"]})


def clip(message):
    """A failure message the server takes: at most 60,000 bytes of UTF-8, no NUL."""
    data = message.replace("\0", " ").encode("utf-8")[:60000]
    return data.decode("utf-8", "ignore")


class Lease:
    """Keeps a task's lease alive from a thread of its own until stopped, or until the
    server says the task is lost."""

    def __init__(self, orch, task, worker, lease_ms):
        self.orch, self.task, self.worker, self.lease_ms = orch, task, worker, lease_ms
        self.lost = threading.Event()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        every = self.lease_ms / 3000.0
        while not self.done.wait(every):
            try:
                self.orch.heartbeat(self.task, self.lease_ms)
            except ApiError as e:
                if e.status == 409:
                    self.lost.set()
                    return
                say(self.worker, "heartbeat of task %s refused (%s); trying again"
                    % (self.task["id"], e))
            except Unreachable as e:
                say(self.worker, "cannot send the heartbeat of task %s (%s); trying again"
                    % (self.task["id"], e))

    def stop(self):
        self.done.set()


def run_task(orch, task, worker, lease_ms, service_timeout):
    """Charges, then ends the task, keeping its lease meanwhile."""
    lease = Lease(orch, task, worker, lease_ms)
    try:
        result = charge(task, worker, service_timeout)
        what = "%s (key %s, attempt %s)" % (task["id"], task["idempotency_key"],
                                           task.get("attempt"))
        if result[0] == "complete":
            action, body = "complete", {"output": result[1]}
            told = "charged %s: %s" % (what, json.dumps(result[1]))
        else:
            action = "fail"
            body = {"message": clip(result[1]), "retryable": result[2]}
            told = "failed %s (%s): %s" % (
                what, "retryable" if result[2] else "permanent", result[1])
        # The lease may have ended while the service answered: then the task is not ours.
        backoff = Backoff()
        give_up = time.monotonic() + max(30.0, 3 * lease_ms / 1000.0)
        while not lease.lost.is_set():
            try:
                orch.end(task, action, body)
                say(worker, told)
                return
            except ApiError as e:
                if e.status == 409:
                    break
                if 400 <= e.status < 500:
                    say(worker, "the server refused to end task %s (%s); dropping it: it goes "
                        "back to the queue when its lease ends" % (task["id"], e))
                    return
                problem = str(e)
            except Unreachable as e:
                problem = str(e)
            if time.monotonic() > give_up:
                say(worker, "cannot end task %s (%s); dropping it: it goes back to the queue "
                    "when its lease ends" % (task["id"], problem))
                return
            say(worker, "cannot end task %s yet (%s); trying again" % (task["id"], problem))
            # (Not cut short by Ctrl-C: the worker finishes the tasks in hand.)
            time.sleep(backoff.next())
        say(worker, "lost task %s (its lease ended and it may be another worker's now); "
            "dropped it" % task["id"])
    finally:
        lease.stop()


class Link:
    """Whether the server answers, as all lanes see it: said once when it changes."""

    def __init__(self):
        self.lock = threading.Lock()
        self.down = False

    def failed(self, worker, problem):
        with self.lock:
            if not self.down:
                say(worker, "cannot reach the orch server (%s); trying again, every %.0f s "
                    "at most (is the checkout example running with --payment-queue?)"
                    % (problem, MAX_BACKOFF_S))
            self.down = True

    def answered(self, worker, url):
        with self.lock:
            if self.down:
                say(worker, "connected to %s" % url)
            self.down = False


def serve(orch, args, busy, link):
    """One lane of the worker: lease a task, run it, again, until stopped."""
    backoff = Backoff()
    while not stop.is_set():
        try:
            tasks = orch.lease(args.worker, args.queue, args.wait_ms, args.lease_ms)
        except Unreachable as e:
            link.failed(args.worker, e)
            backoff.pause()
            continue
        except ApiError as e:
            if e.status in (401, 403):
                quit_with("the server at %s refused the worker (%s): pass an admin token with "
                          "--token (or ORCH_TOKEN)" % (args.url, e))
            elif e.status in (400, 404, 405, 413, 415):
                quit_with("the server at %s refused the lease request (%s): is --url the orch "
                          "server's address, and are --queue, --worker, --lease-ms and "
                          "--wait-ms in range?" % (args.url, e))
            else:
                say(args.worker, "the server could not lease tasks (%s); trying again" % e)
                backoff.pause()
            continue
        link.answered(args.worker, args.url)
        backoff.reset()
        for task in tasks:
            with busy:
                busy.count += 1
            try:
                run_task(orch, task, args.worker, args.lease_ms, args.service_timeout)
            except Exception as e:  # A bug here must not kill the lane (the lease ends).
                say(args.worker, "task %s: unexpected error %r; it goes back to the queue "
                    "when its lease ends" % (task.get("id"), e))
            finally:
                with busy:
                    busy.count -= 1
                    busy.notify_all()


def quit_with(message):
    if not fatal:
        fatal.append(message)
    stop.set()


def base_url(url):
    """The server's base URL without a trailing slash, or exits saying what is wrong."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.query \
            or parsed.fragment:
        sys.exit("payment-worker: --url %r is not the orch server's URL; give e.g. "
                 "http://127.0.0.1:8080/ (what the checkout example prints)" % url)
    return url.rstrip("/")


def in_range(low, high, what):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError("%r is not a whole number" % text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError("%s must be %d to %d, got %d"
                                             % (what, low, high, value))
        return value
    return parse


def main():
    parser = argparse.ArgumentParser(
        description="Serve the checkout example's payment step (queue `payments`) through "
                    "the orch worker protocol.")
    parser.add_argument("--url", required=True,
                        help="the orch server's URL, e.g. http://127.0.0.1:8080/")
    parser.add_argument("--token", default=os.environ.get("ORCH_TOKEN"),
                        help="an admin token of the server, if it has tokens "
                             "(default: $ORCH_TOKEN)")
    parser.add_argument("--concurrency", type=in_range(1, 100, "--concurrency"), default=4,
                        help="how many tasks run at once (default 4)")
    parser.add_argument("--queue", action="append",
                        help="a queue to serve (repeatable; default payments)")
    parser.add_argument("--worker", default="py-%s-%d" % (socket.gethostname(), os.getpid()),
                        help="this worker's name, shown to operators and in the service log "
                             "(default py-HOST-PID)")
    parser.add_argument("--lease-ms", type=in_range(1000, 3600000, "--lease-ms"),
                        default=30000,
                        help="how long a task stays this worker's without a heartbeat "
                             "(heartbeats every third of it; default 30000): a worker that "
                             "dies gives its tasks back this long after its last heartbeat")
    parser.add_argument("--wait-ms", type=in_range(0, 60000, "--wait-ms"), default=20000,
                        help="longest long-poll for a task (default 20000)")
    parser.add_argument("--service-timeout", type=float, default=30.0,
                        help="seconds a call to the payment service may take (default 30)")
    args = parser.parse_args()
    args.url = base_url(args.url)
    args.queue = args.queue or [DEFAULT_QUEUE]
    if not 1 <= len(args.worker) <= 128 or any(not 32 <= ord(c) < 127 for c in args.worker):
        # (It is sent in a header to the payment service, too.)
        parser.error("--worker must be 1 to 128 printable ASCII characters, e.g. py-1")
    if args.service_timeout <= 0:
        parser.error("--service-timeout must be more than 0")

    interrupted = []

    def on_signal(signum, _frame):
        if interrupted:
            # (Not through say(): the interrupted thread may hold its lock.)
            os.write(2, ("payment-worker %s: stopped at once; the tasks it held go back to "
                         "their queue when their leases end\n" % args.worker).encode())
            os._exit(130)
        interrupted.append(signum)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    orch = Orch(args.url, args.token)
    busy = threading.Condition()
    busy.count = 0
    link = Link()
    say(args.worker, "serving queue %s of %s (%d at once, lease %d ms); Ctrl-C stops"
        % (", ".join(args.queue), args.url, args.concurrency, args.lease_ms))
    for _ in range(args.concurrency):
        # Daemon threads: a lane waiting in a long-poll does not hold the exit up.
        threading.Thread(target=serve, args=(orch, args, busy, link), daemon=True).start()
    while not stop.wait(0.5):
        pass
    if fatal:
        say(args.worker, fatal[0])
        return 2
    # Finish the tasks in hand (a lane in a long-poll is abandoned: a task leased to it in
    # the last moment goes back to the queue when its lease ends).
    with busy:
        if busy.count:
            say(args.worker, "stopping: finishing %d task(s) in hand" % busy.count)
        while busy.count:
            busy.wait(0.5)
    say(args.worker, "stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
