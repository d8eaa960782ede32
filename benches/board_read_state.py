#!/usr/bin/env python3
"""Read state (既読) at volume (issue #16): a board of 10,000 posts and a team of 12.

    python3 benches/board_read_state.py                       # SQLite in a temporary directory
    python3 benches/board_read_state.py --backend postgres    # database renraku_bench_board on 127.0.0.1:5432

Builds the release binary (as `over_http.py` does), starts `renraku serve --demo`, and
through the API as the demo's principals: the administrator of 南箕輪村 adds ten
professionals to 山田 太郎's support team (twelve members with the demo's care manager and
doctor); the doctor posts 10,000 board posts (transactions of 500) and replies to every
tenth; the care manager marks everything up to the 5,000th post read and 100 later posts
one by one. Then, sequentially over loopback HTTP (one client, so each figure is one
request's latency, not throughput), it times: the board's newest page of 20 (search), the
page's `$read-status` (replies, 既読 n/m and names), the care manager's `$unread` for the
person and overall, and a `$mark-read` of one post. Prints a Markdown table of the median
and 95th percentile in milliseconds.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from healthz import wait_until_healthy  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target", "release", "renraku")
KIND = "https://renraku.example.jp/fhir/CodeSystem/communication-kind"
PERSON = "demo-yamada-taro"
POSTS = 10_000
CM = "demo-care-manager"
DR = "demo-doctor-ina"
ADMIN = "demo-admin-minamiminowa"


def call(base, method, path, token, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/fhir+json")
    with urllib.request.urlopen(request, timeout=300) as reply:
        return json.loads(reply.read() or b"null")


def timed(label, count, action):
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    p95 = samples[min(len(samples) - 1, int(len(samples) * 0.95))]
    return label, statistics.median(samples), p95


def post(sent, text, parent=None):
    body = {
        "resourceType": "Communication", "status": "completed",
        "category": [{"coding": [{"system": KIND, "code": "board"}]}],
        "subject": {"reference": f"Patient/{PERSON}"},
        "sender": {"reference": "PractitionerRole/demo-role-dr-tanaka"},
        "sent": sent, "payload": [{"contentString": text}],
    }
    if parent:
        body["inResponseTo"] = [{"reference": parent}]
    return body


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--port", type=int, default=18093)
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--settle", type=int, default=0, metavar="SECONDS",
                        help="wait this long after loading before timing (e.g. 65 on a PostgreSQL without "
                             "autovacuum, for the gateway's own ANALYZE to have run)")
    arguments = parser.parse_args()
    if not arguments.no_build:
        subprocess.run(["cargo", "build", "--release", "--features", "test-support", "--bin", "renraku"], check=True, cwd=ROOT)
    directory = tempfile.mkdtemp(prefix="renraku-board-")
    settings = ["serve", "--demo", "--data-dir", directory, "--listen", f"127.0.0.1:{arguments.port}"]
    if arguments.backend == "postgres":
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-c", "DROP DATABASE IF EXISTS renraku_bench_board"], check=True, capture_output=True)
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-c", "CREATE DATABASE renraku_bench_board"], check=True, capture_output=True)
        settings += ["--database-url", "postgres://postgres@127.0.0.1:5432/renraku_bench_board"]
    log = open(os.path.join(directory, "gateway.log"), "a")
    gateway = subprocess.Popen([BINARY, *settings], cwd=ROOT, env=dict(os.environ, RENRAKU_LOG="warn"), stdout=log)
    base = f"http://127.0.0.1:{arguments.port}"
    try:
        wait_until_healthy(base)
        mm = "/minamiminowa/fhir"
        # Ten more professionals of the care office on the team: twelve members.
        team = call(base, "GET", f"{mm}/CareTeam/demo-team-yamada", ADMIN)
        for n in range(10):
            call(base, "PUT", f"{mm}/Practitioner/bench-pro-{n}", ADMIN,
                 {"resourceType": "Practitioner", "id": f"bench-pro-{n}", "name": [{"text": f"職員 {n}"}]})
            call(base, "PUT", f"{mm}/PractitionerRole/bench-role-{n}", ADMIN,
                 {"resourceType": "PractitionerRole", "id": f"bench-role-{n}", "active": True,
                  "practitioner": {"reference": f"Practitioner/bench-pro-{n}"},
                  "organization": {"reference": "Organization/demo-mm-care-office"}})
            team["participant"].append({"member": {"reference": f"PractitionerRole/bench-role-{n}"}})
        call(base, "PUT", f"{mm}/CareTeam/demo-team-yamada", ADMIN, team)
        # 10,000 posts (every tenth with a reply), in transactions of 500.
        started = time.perf_counter()
        ids = []
        for chunk in range(0, POSTS, 500):
            entries = []
            for n in range(chunk, chunk + 500):
                sent = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(1_760_000_000 + n * 60))
                entries.append({"fullUrl": f"urn:uuid:00000000-0000-4000-8000-{n:012d}",
                                "request": {"method": "POST", "url": "Communication"}, "resource": post(sent, f"投稿 {n}")})
                if n % 10 == 0:
                    reply_sent = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(1_760_000_000 + n * 60 + 30))
                    entries.append({"request": {"method": "POST", "url": "Communication"},
                                    "resource": post(reply_sent, "返信", f"urn:uuid:00000000-0000-4000-8000-{n:012d}")})
            answer = call(base, "POST", "/ina/fhir", DR, {"resourceType": "Bundle", "type": "transaction", "entry": entries})
            ids += [e["response"]["location"].split("/")[1] for e in answer["entry"]]
        loaded = time.perf_counter() - started
        halfway = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(1_760_000_000 + 5_000 * 60))
        call(base, "POST", f"{mm}/Patient/{PERSON}/$mark-read", CM,
             {"resourceType": "Parameters", "parameter": [{"name": "through", "valueInstant": halfway}]})
        call(base, "POST", f"{mm}/Patient/{PERSON}/$mark-read", CM, {"resourceType": "Parameters", "parameter": [
            {"name": "communication", "valueReference": {"reference": f"Communication/{i}"}} for i in ids[-100:]]})
        page_query = (f"{mm}/Communication?subject=Patient/{PERSON}&category={KIND}|board"
                      f"&in-response-to:missing=true&_sort=-sent&_count=20")
        time.sleep(arguments.settle)
        page = call(base, "GET", page_query, CM)
        page_ids = ",".join(e["resource"]["id"] for e in page["entry"])
        status = call(base, "GET", f"{mm}/Patient/{PERSON}/$read-status?communication={page_ids}", CM)
        assert len(status["parameter"]) == 20, status
        unread = call(base, "GET", f"{mm}/Patient/$unread", CM)
        rows = [
            timed("board page of 20, newest first (search, with its total)", 100, lambda: call(base, "GET", page_query, CM)),
            timed("the same page with `_total=none`", 100, lambda: call(base, "GET", page_query + "&_total=none", CM)),
            timed("`$read-status` of that page (replies, 既読 n/12, names)", 100,
                  lambda: call(base, "GET", f"{mm}/Patient/{PERSON}/$read-status?communication={page_ids}", CM)),
            timed("`$unread` for the person", 100, lambda: call(base, "GET", f"{mm}/Patient/{PERSON}/$unread", CM)),
            timed("`$unread` overall (`Patient/$unread`)", 100, lambda: call(base, "GET", f"{mm}/Patient/$unread", CM)),
            timed("`$mark-read` of one post", 100, lambda: call(base, "POST", f"{mm}/Patient/{PERSON}/$mark-read", CM,
                  {"resourceType": "Parameters", "parameter": [{"name": "communication", "valueReference": {"reference": f"Communication/{ids[7000]}"}}]})),
        ]
        print(f"\n{arguments.backend}: {POSTS:,} posts and {POSTS // 10:,} replies loaded in {loaded:.0f} s; "
              f"the care manager's unread: {unread['parameter'][0]['valueInteger']:,}\n")
        print("| request (one client, sequential, audited) | median ms | p95 ms |")
        print("|---|---|---|")
        for label, median, p95 in rows:
            print(f"| {label} | {median:.1f} | {p95:.1f} |")
    finally:
        gateway.terminate()
        gateway.wait()


if __name__ == "__main__":
    sys.exit(main())
