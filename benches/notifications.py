#!/usr/bin/env python3
"""Notifications at volume (issue #17): 100 subscribers of one person's board.

    python3 benches/notifications.py                       # SQLite in a temporary directory
    python3 benches/notifications.py --backend postgres    # database renraku_bench_notify on 127.0.0.1:5432

Builds the release binary (as `over_http.py` does) and starts `renraku serve --demo`. The
demo's doctor (on 山田 太郎's support team, in another municipality) subscribes 100 times to
the board-message topic for the person; the demo's care manager writes the posts.

1. Throughput of `POST Communication` (a board post, audited) with wrk (2 threads, 32
   connections, 10 s): with no subscription; with 100 websocket subscriptions that no
   client is bound to (every write enqueues 100 outbox rows that nobody delivers: the cost
   of the outbox alone); with 100 rest-hook subscriptions delivering to a local receiver (the
   whole cost: outbox, judging each event under the subscriber's grant, audit, HTTP).
2. Latency from commit to receipt: 30 posts one at a time; for each, the time from the POST's
   answer (the write has committed) until each of the 100 subscribers received it — rest-hook
   (a local HTTP receiver) and websocket (100 bound clients, Python `websockets`).

Needs: wrk, and `pip install websockets`. Prints Markdown tables.
"""

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from healthz import wait_until_healthy  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target", "release", "renraku")
KIND = "https://renraku.example.jp/fhir/CodeSystem/communication-kind"
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
TOPIC = "https://renraku.example.jp/fhir/SubscriptionTopic/board-message"
PERSON = "demo-yamada-taro"
CM = "demo-care-manager"
DR = "demo-doctor-ina"
SUBSCRIBERS = 100
POSTS = 30

# (subscriber, focus id) → perf_counter time of receipt
RECEIVED = {}
HANDSHAKES = set()
LOCK = threading.Lock()


def call(base, method, path, token, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/fhir+json")
    with urllib.request.urlopen(request, timeout=300) as reply:
        return json.loads(reply.read() or b"null")


def record(subscriber, bundle, now):
    parameters = bundle["entry"][0]["resource"]["parameter"]
    kind = next(p["valueCode"] for p in parameters if p["name"] == "type")
    with LOCK:
        if kind == "handshake":
            HANDSHAKES.add(subscriber)
        for event in (p for p in parameters if p["name"] == "notification-event"):
            focus = next((part["valueReference"]["reference"] for part in event["part"] if part["name"] == "focus"), "")
            RECEIVED.setdefault((subscriber, focus.rsplit("/", 1)[-1]), now)


class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        now = time.perf_counter()
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.end_headers()
        record(self.path, json.loads(body), now)

    def log_message(self, *arguments):
        pass


def board_post(text):
    return {
        "resourceType": "Communication", "status": "completed",
        "category": [{"coding": [{"system": KIND, "code": "board"}]}],
        "subject": {"reference": f"Patient/{PERSON}"},
        "sender": {"reference": "PractitionerRole/demo-role-cm-suzuki"},
        "sent": "2026-12-01T09:00:00+09:00", "payload": [{"contentString": text}],
    }


def subscription(channel):
    return {
        "resourceType": "Subscription", "status": "requested", "reason": "bench", "criteria": TOPIC,
        "_criteria": {"extension": [{"url": BACKPORT + "backport-filter-criteria", "valueString": f"Communication?subject=Patient/{PERSON}"}]},
        "channel": channel,
    }


def wrk(base, token, path, body, directory):
    script = os.path.join(directory, "post.lua")
    with open(script, "w") as lua:
        lua.write('wrk.method = "POST"\n')
        lua.write('wrk.headers["Authorization"] = "Bearer %s"\n' % token)
        lua.write('wrk.headers["Content-Type"] = "application/fhir+json"\n')
        lua.write("wrk.body = %s\n" % json.dumps(json.dumps(body, ensure_ascii=True)))
    output = subprocess.run(["wrk", "-t", "2", "-c", "32", "-d", "10s", "--latency", "-s", script, base + path],
                            check=True, capture_output=True, text=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    found = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
    value, unit = float(found.group(1)), found.group(2)
    p50 = value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    return rate, p50, int(bad.group(1)) if bad else 0


def percentiles(samples):
    samples = sorted(samples)
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def wait_for(condition, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def latencies(base, label, subscribers):
    samples = []
    missing = 0
    for n in range(POSTS):
        answer = call(base, "POST", "/minamiminowa/fhir/Communication", CM, board_post(f"{label} {n}"))
        committed = time.perf_counter()
        focus = answer["id"]
        wait_for(lambda: all((s, focus) in RECEIVED for s in subscribers), 30)
        with LOCK:
            for subscriber in subscribers:
                if (subscriber, focus) in RECEIVED:
                    samples.append((RECEIVED[(subscriber, focus)] - committed) * 1000)
                else:
                    missing += 1
    return percentiles(samples) + (len(samples), missing)


async def websocket_clients(base, ids, ready, stop):
    import websockets

    async def client(subscription_id):
        minted = call(base, "POST", f"/ina/fhir/Subscription/{subscription_id}/$get-ws-binding-token", DR)
        token = next(p["valueString"] for p in minted["parameter"] if p["name"] == "token")
        async with websockets.connect(base.replace("http", "ws", 1) + "/ina/fhir/websocket", max_size=None) as socket:
            await socket.send(f"bind-with-token: {token}")
            while not stop.is_set():
                try:
                    text = await asyncio.wait_for(socket.recv(), 0.5)
                except asyncio.TimeoutError:
                    continue
                now = time.perf_counter()
                message = json.loads(text)
                if message.get("resourceType") == "Bundle":
                    record(f"ws-{subscription_id}", message, now)
                    with LOCK:
                        if len(HANDSHAKES) >= len(ids):
                            ready.set()

    await asyncio.gather(*(client(i) for i in ids))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--port", type=int, default=18094)
    parser.add_argument("--no-build", action="store_true")
    arguments = parser.parse_args()
    if not arguments.no_build:
        subprocess.run(["cargo", "build", "--release", "--features", "test-support", "--bin", "renraku"], check=True, cwd=ROOT)
    directory = tempfile.mkdtemp(prefix="renraku-notify-")
    settings = ["serve", "--demo", "--data-dir", directory, "--listen", f"127.0.0.1:{arguments.port}"]
    if arguments.backend == "postgres":
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-c", "DROP DATABASE IF EXISTS renraku_bench_notify"], check=True, capture_output=True)
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-c", "CREATE DATABASE renraku_bench_notify"], check=True, capture_output=True)
        settings += ["--database-url", "postgres://postgres@127.0.0.1:5432/renraku_bench_notify"]
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    receiver.daemon_threads = True
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{receiver.server_address[1]}"
    log = open(os.path.join(directory, "gateway.log"), "a")
    gateway = subprocess.Popen([BINARY, *settings], cwd=ROOT, env=dict(os.environ, RENRAKU_LOG="warn"), stdout=log)
    base = f"http://127.0.0.1:{arguments.port}"
    post_path = "/minamiminowa/fhir/Communication"
    try:
        wait_until_healthy(base)
        rows = []
        rate, p50, bad = wrk(base, CM, post_path, board_post("負荷"), directory)
        baseline = rate
        rows.append(("no subscription", rate, p50, bad))

        # 100 websocket subscriptions nobody is bound to: the outbox writes alone.
        unbound = [call(base, "POST", "/ina/fhir/Subscription", DR,
                        subscription({"type": "websocket", "payload": "application/fhir+json"}))["id"] for _ in range(SUBSCRIBERS)]
        rate, p50, bad = wrk(base, CM, post_path, board_post("負荷"), directory)
        rows.append((f"{SUBSCRIBERS} subscriptions enqueued, none delivered (outbox rows only)", rate, p50, bad))
        for subscription_id in unbound:
            sub = call(base, "GET", f"/ina/fhir/Subscription/{subscription_id}", DR)
            sub["status"] = "off"
            call(base, "PUT", f"/ina/fhir/Subscription/{subscription_id}", DR, sub)

        # 100 rest-hook subscriptions to the local receiver.
        hooks = []
        for n in range(SUBSCRIBERS):
            channel = {"type": "rest-hook", "endpoint": f"{hook}/hook/{n}", "payload": "application/fhir+json"}
            hooks.append(call(base, "POST", "/ina/fhir/Subscription", DR, subscription(channel))["id"])
        assert wait_for(lambda: len(HANDSHAKES) >= SUBSCRIBERS, 60), f"handshakes: {len(HANDSHAKES)}"
        rest_hook = latencies(base, "rest-hook", [f"/hook/{n}" for n in range(SUBSCRIBERS)])
        rate, p50, bad = wrk(base, CM, post_path, board_post("負荷"), directory)
        rows.append((f"{SUBSCRIBERS} rest-hook subscriptions delivering (judged, audited, sent)", rate, p50, bad))
        for subscription_id in hooks:
            sub = call(base, "GET", f"/ina/fhir/Subscription/{subscription_id}", DR)
            sub["status"] = "off"
            call(base, "PUT", f"/ina/fhir/Subscription/{subscription_id}", DR, sub)

        # 100 websocket subscriptions, each with a bound client.
        HANDSHAKES.clear()
        sockets = [call(base, "POST", "/ina/fhir/Subscription", DR,
                        subscription({"type": "websocket", "payload": "application/fhir+json"}))["id"] for _ in range(SUBSCRIBERS)]
        ready, stop = threading.Event(), threading.Event()
        loop = threading.Thread(target=lambda: asyncio.run(websocket_clients(base, sockets, ready, stop)), daemon=True)
        loop.start()
        assert ready.wait(120), f"websocket handshakes: {len(HANDSHAKES)}"
        websocket = latencies(base, "websocket", [f"ws-{i}" for i in sockets])
        stop.set()
        loop.join(5)

        print(f"\n{arguments.backend}: POST Communication (a board post, audited), wrk 2 threads, 32 connections, 10 s\n")
        print("| subscribers | req/s | ratio | p50 ms | non-2xx |")
        print("|---|---|---|---|---|")
        for label, rate, p50, bad in rows:
            print(f"| {label} | {rate:.0f} | {rate / baseline:.2f} | {p50:.1f} | {bad} |")
        print(f"\n{arguments.backend}: from the POST's answer (committed) to receipt, {POSTS} posts one at a time, {SUBSCRIBERS} subscribers\n")
        print("| channel | p50 ms | p99 ms | receipts | missing |")
        print("|---|---|---|---|---|")
        for label, result in (("rest-hook", rest_hook), ("websocket", websocket)):
            print(f"| {label} | {result[0]:.1f} | {result[1]:.1f} | {result[2]} | {result[3]} |")
    finally:
        gateway.terminate()
        gateway.wait()
        receiver.shutdown()


if __name__ == "__main__":
    sys.exit(main())
