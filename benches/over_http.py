#!/usr/bin/env python3
"""The HTTP benchmark (issue #13): the release binary, over loopback, driven by wrk.

    python3 benches/over_http.py                       # SQLite in a temporary directory
    python3 benches/over_http.py --backend postgres    # database renraku_bench_http on 127.0.0.1:5432

It builds `renraku` in release mode with the `test-support` feature (for the unrestricted
test principal and the hidden `bench-world` and `--audit-off-for-benchmarks-only`), writes
the world (`renraku bench-world`: per size N a professional whose office registered N - 20
generated persons and is on each one's support team with consent), starts `renraku serve`,
registers each professional's 20 measured persons through the API (Patient, CareTeam,
Consent; 50 Communications on the first one's board, which the timeline reads; the POST
workload writes on the last one's), then runs each workload with wrk (Debian's package):
the unrestricted test principal on a gateway with the audit trail off (the engine's
ceiling), every actor on a gateway with it on (the actors in order, then in reverse), and
the ceiling again; each cell is the mean of its two runs. Prints a Markdown table.
Needs: wrk, curl-free (urllib), and for PostgreSQL a server on 127.0.0.1:5432 (trust).
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# RENRAKU_BENCH_PROFILE=profiling measures the incremental `profiling` build instead (see Cargo.toml).
PROFILE = os.environ.get("RENRAKU_BENCH_PROFILE", "release")
# RENRAKU_BENCH_BINARY=path measures another build (e.g. an earlier commit's, for an A/B run).
BINARY = os.environ.get("RENRAKU_BENCH_BINARY") or os.path.join(ROOT, "target", PROFILE, "renraku")
TENANT = "ina"
TIMELINE_MESSAGES = 50


def run(arguments, **kwargs):
    return subprocess.run(arguments, check=True, cwd=ROOT, **kwargs)


class Gateway:
    def __init__(self, settings, port, audit_off):
        self.base = f"http://127.0.0.1:{port}"
        arguments = [BINARY, "serve", *settings, "--listen", f"127.0.0.1:{port}"]
        if audit_off:
            arguments.append("--audit-off-for-benchmarks-only")
        environment = dict(os.environ, RENRAKU_LOG="warn")
        # The gateway's log lines (warnings and errors) go to gateway.log beside the database.
        directory = settings[settings.index("--data-dir") + 1]
        self.log = open(os.path.join(directory, "gateway.log"), "a")
        self.process = subprocess.Popen(arguments, cwd=ROOT, env=environment, stdout=self.log)
        for _ in range(600):
            try:
                with urllib.request.urlopen(self.base + "/healthz", timeout=1) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("the gateway did not become healthy")

    def rss_kib(self):
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def send(base, token, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", "application/fhir+json")
    request.add_header("Accept", "application/fhir+json")
    with urllib.request.urlopen(request) as reply:
        return json.loads(reply.read() or b"null")


def communication(patient, text):
    return {
        "resourceType": "Communication",
        "status": "completed",
        "category": [{"coding": [{"system": "https://renraku.example.jp/fhir/CodeSystem/channel", "code": "board"}]}],
        "subject": {"reference": f"Patient/{patient}"},
        "sent": "2026-11-20T10:00:00+09:00",
        "payload": [{"contentString": text}],
    }


def register_measured(base, actor):
    """The actor's measured persons, written through the API as the professional: the
    family search finds them all; the first gets a board of 50 messages."""
    token, family = actor["token"], f"計測{actor['size']}"
    persons = []
    for n in range(actor["measured"]):
        patient = send(base, token, "POST", f"/{TENANT}/fhir/Patient", {
            "resourceType": "Patient", "active": True,
            "name": [{"family": family, "given": [f"太郎{n}"]}],
            "managingOrganization": {"reference": f"Organization/{actor['organization']}"},
        })
        subject = {"reference": f"Patient/{patient['id']}"}
        send(base, token, "POST", f"/{TENANT}/fhir/Consent", {
            "resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]}, "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": subject, "provision": {"type": "permit"},
        })
        send(base, token, "POST", f"/{TENANT}/fhir/CareTeam", {
            "resourceType": "CareTeam", "status": "active", "subject": subject,
            "participant": [{"member": {"reference": f"PractitionerRole/{actor['role']}"}}],
        })
        persons.append(patient["id"])
    for n in range(TIMELINE_MESSAGES):
        send(base, token, "POST", f"/{TENANT}/fhir/Communication", communication(persons[0], f"計測用の投稿 {n}"))
    # Posts go to another person's board where there is one, so that the timeline measured
    # stays at its 50 messages however many posts the runs add.
    actor["person"], actor["family"], actor["poster"] = persons[0], family, persons[-1]


def workloads(actor):
    quote = urllib.parse.quote
    person = actor["person"]
    return [
        ("read by id", "GET", f"/{TENANT}/fhir/Patient/{person}", None),
        ("family search", "GET", f"/{TENANT}/fhir/Patient?family={quote(actor['family'])}", None),
        ("timeline", "GET", f"/{TENANT}/fhir/Communication?subject=Patient/{person}&_sort=-sent&_count=20", None),
        ("POST Communication", "POST", f"/{TENANT}/fhir/Communication", communication(actor["poster"], "ベンチマークの投稿")),
    ]


def hits(base, token, path):
    bundle = send(base, token, "GET", path)
    return len([e for e in bundle.get("entry", []) if e.get("search", {}).get("mode") == "match"])


def journal_backlog(settings):
    """How many audit events PostgreSQL's journal holds unprojected (None on SQLite, which
    stores events as AuditEvent rows at once)."""
    if "--database-url" not in settings:
        return None
    url = settings[settings.index("--database-url") + 1]
    output = subprocess.run(["psql", url, "-Atc", "SELECT COUNT(*) FROM audit_log WHERE projected = 0"],
                            check=True, capture_output=True, text=True).stdout
    return int(output.strip() or 0)


def wait_for_projection(settings):
    """Waits until the journal is projected; returns how long that took (seconds)."""
    started = time.time()
    while (journal_backlog(settings) or 0) > 0 and time.time() - started < 300:
        time.sleep(0.1)
    return time.time() - started


def wrk(base, token, method, path, body, arguments, directory, settings=()):
    """One wrk run. On PostgreSQL the run ends when the audit events it caused are projected:
    the rate counts the time the projection took after the load stopped (the gateway's
    projector may be up to a queue's worth of events behind), and a run does not leave
    projection work to the next."""
    script = os.path.join(directory, "request.lua")
    with open(script, "w") as lua:
        lua.write(f'wrk.method = "{method}"\n')
        lua.write('wrk.headers["Authorization"] = "Bearer %s"\n' % token)
        lua.write('wrk.headers["Accept"] = "application/fhir+json"\n')
        if body is not None:
            lua.write('wrk.headers["Content-Type"] = "application/fhir+json"\n')
            lua.write("wrk.body = %s\n" % json.dumps(json.dumps(body, ensure_ascii=True)))
    command = ["wrk", "-t", str(arguments.threads), "-c", str(arguments.connections), "-d", f"{arguments.duration}s",
               "--latency", "-s", script, base + path]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    requests = rate * arguments.duration
    drain = wait_for_projection(settings) if journal_backlog(settings) else 0.0
    rate = requests / (arguments.duration + drain)

    def percentile(name):
        found = re.search(rf"^\s+{name}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        if not found:
            return float("nan")
        value, unit = float(found.group(1)), found.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors: (.*)", output)
    if bad or errors:
        print(f"  !! {path}: {bad.group(0) if bad else ''} {errors.group(0) if errors else ''}", file=sys.stderr)
    return {"rate": rate, "p50": percentile("50"), "p99": percentile("99"), "failed": int(bad.group(1)) if bad else 0, "drain": drain,
            "requests": requests}


def soak(settings, actors, arguments, directory):
    """Memory under a long mixed load: RSS after the first minute and at the end."""
    gateway = Gateway(settings, arguments.port, audit_off=False)
    try:
        practitioners = [a for a in actors if a["label"] != "unrestricted"]
        for actor in practitioners:
            register_measured(gateway.base, actor)
        largest = practitioners[-1]
        requests = workloads(largest)
        script = os.path.join(directory, "mixed.lua")
        with open(script, "w") as lua:
            lua.write('local token = "Bearer %s"\nlocal requests = {}\n' % largest["token"])
            for _, method, path, body in requests:
                headers = '{["Authorization"] = token, ["Accept"] = "application/fhir+json", ["Content-Type"] = "application/fhir+json"}'
                body_text = json.dumps(json.dumps(body, ensure_ascii=True)) if body is not None else "nil"
                lua.write(f'table.insert(requests, wrk.format("{method}", "{path}", {headers}, {body_text}))\n')
            lua.write("local n = 0\nrequest = function() n = n + 1; return requests[(n % #requests) + 1] end\n")
        command = ["wrk", "-t", str(arguments.threads), "-c", str(arguments.connections), "-d", f"{arguments.soak}s",
                   "-s", script, gateway.base]
        load = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        time.sleep(min(60, arguments.soak))
        first = gateway.rss_kib()
        output = load.communicate()[0]
        last = gateway.rss_kib()
        rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
        bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
        print(f"{arguments.backend}: mixed load as {largest['label']} for {arguments.soak} s, "
              f"{float(rate.group(1)) if rate else 0:.0f} req/s, non-2xx {bad.group(1) if bad else 0}; "
              f"RSS {first / 1024:.0f} MiB after the first minute, {last / 1024:.0f} MiB at the end "
              f"({(last - first) * 100 / max(first, 1):+.1f} %)")
    finally:
        gateway.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--sizes", default="1,2000,20000")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the data directory (and print the actors)")
    parser.add_argument("--soak", type=int, default=0, metavar="SECONDS",
                        help="instead of the table: a mixed load (the four workloads in turn) as the largest actor, "
                             "audited, for SECONDS, printing the gateway's RSS after the first minute and at the end")
    parser.add_argument("--actors-audit", choices=["on", "off"], default="on",
                        help="run the professionals' cells with the audit trail on (the default) or off, "
                             "to tell the policy's cost from the audit trail's")
    arguments = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed (apt-get install wrk)")
    if not arguments.no_build:
        run(["cargo", "build", "--profile", PROFILE, "--features", "test-support", "--bin", "renraku"])
    directory = tempfile.mkdtemp(prefix="renraku-bench-http-")
    settings = ["--demo", "--data-dir", directory]
    if arguments.backend == "postgres":
        database = "renraku_bench_http"
        admin = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc"]
        run(admin + [f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'])
        run(admin + [f'CREATE DATABASE "{database}"'])
        settings += ["--database-url", f"postgres://postgres@127.0.0.1:5432/{database}"]
    started = time.time()
    lines = run([BINARY, "bench-world", *settings, "--tenant", TENANT, "--sizes", arguments.sizes],
                capture_output=True, text=True, env=dict(os.environ, RENRAKU_LOG="warn")).stdout
    actors = [json.loads(line) for line in lines.splitlines() if line.startswith("{")]
    print(f"world written in {time.time() - started:.0f} s", file=sys.stderr)

    if arguments.soak:
        soak(settings, actors, arguments, directory)
        return

    results = {}
    practitioners = [a for a in actors if a["label"] != "unrestricted"]
    # The engine's ceiling: the unrestricted test principal, audit off, same persons.
    unrestricted = next(a for a in actors if a["label"] == "unrestricted")
    largest = practitioners[-1]

    def record(label, name, result, found):
        result["hits"] = found
        earlier = results.get((label, name))
        if earlier:
            result = {key: (earlier[key] + result[key]) / 2 if key in ("rate", "p50", "p99", "drain") else result[key] for key in result}
        results[(label, name)] = result
        print(f"  {label:<14} {name:<20} {result['rate']:>9.0f} req/s  p50 {result['p50']:.2f} ms  "
              f"p99 {result['p99']:.2f} ms  hits {found}  projected {result['drain']:.1f} s after"
              f"{'  (mean of two runs)' if earlier else ''}", file=sys.stderr)

    def measure_ceiling(index):
        # The largest actor's measured persons (registered first), read with the ceiling's token.
        ceiling = dict(largest, token=unrestricted["token"])
        gateway = Gateway(settings, arguments.port, audit_off=True)
        try:
            name, method, path, body = workloads(ceiling)[index]
            found = hits(gateway.base, ceiling["token"], path) if method == "GET" and "?" in path else None
            record("ceiling", name, wrk(gateway.base, ceiling["token"], method, path, body, arguments, directory), found)
        finally:
            gateway.stop()

    gateway = Gateway(settings, arguments.port, audit_off=arguments.actors_audit == "off")
    try:
        for actor in practitioners:
            register_measured(gateway.base, actor)
        rss_first = gateway.rss_kib()
    finally:
        gateway.stop()
    rss_last = rss_first
    # Every run grows the database (each audited request adds an event, each POST a
    # message), and later runs were measurably slower for it: a timeline read 966, 645
    # and 462 req/s as the actors reaching 1, 2,000 and 20,000 in that order, and 1,071
    # as the actor reaching 20,000 on a fresh world (benches/README.md, session 19). And this
    # machine's speed drifts by up to twice within minutes: a ceiling measured minutes before
    # or after the actors made ratios of 0.25 from what was 0.47 in runs side by side
    # (session 29). So each workload runs the ceiling, the actors in order and then in
    # reverse, and the ceiling again (C A B C C B A C), and a cell is the mean of its two
    # runs: a drift linear in time cancels out, and a ratio compares runs less than a
    # minute apart.
    for index in range(len(workloads(practitioners[0]))):
        measure_ceiling(index)
        gateway = Gateway(settings, arguments.port, audit_off=arguments.actors_audit == "off")
        try:
            for actor in practitioners + practitioners[::-1]:
                name, method, path, body = workloads(actor)[index]
                found = hits(gateway.base, actor["token"], path) if method == "GET" and "?" in path else None
                record(actor["label"], name, wrk(gateway.base, actor["token"], method, path, body, arguments, directory, settings), found)
            rss_last = gateway.rss_kib()
        finally:
            gateway.stop()
        measure_ceiling(index)

    columns = ["ceiling"] + [a["label"] for a in practitioners]
    print(f"\n{arguments.backend}, wrk -t{arguments.threads} -c{arguments.connections} -d{arguments.duration}s; "
          "req/s (p50 ms / p99 ms); ratio = the largest actor / ceiling\n")
    print("| workload | " + " | ".join(columns) + " | ratio |")
    print("|---|" + "---|" * (len(columns) + 1))
    for name, *_ in workloads(largest):
        cells = []
        for column in columns:
            r = results.get((column, name))
            cells.append(f"{r['rate']:,.0f} ({r['p50']:.1f} / {r['p99']:.1f})" if r else "–")
        ratio = results[(largest["label"], name)]["rate"] / results[("ceiling", name)]["rate"]
        print(f"| {name} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    print(f"\nRSS of the audited gateway: {rss_first / 1024:.0f} MiB after loading, {rss_last / 1024:.0f} MiB after the last workload's runs")
    if arguments.keep:
        print(f"\ndata directory kept: {directory}")
        for actor in actors:
            print(json.dumps(actor, ensure_ascii=False))
    else:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
