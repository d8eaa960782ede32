#!/usr/bin/env python3
"""The security review's reproductions, rerun black-box against a built `renraku` binary
(release by default) in demo mode, as an attacker would: over HTTP, with the demo's tokens,
no knowledge of the code. Then a fuzzing pass and kill -9 cycles.

    cargo build --release
    python3 tests/blackbox/security_rerun.py                      # SQLite
    python3 tests/blackbox/security_rerun.py --backend postgres   # database renraku_blackbox

What it checks (issue 11, "How we will check it"):
- each reproduction answers a 4xx (or the correct denial) where it once succeeded, and
  the process is still up afterwards;
- fuzzing: N mutated requests (bodies, paths, queries, headers, with and without tokens):
  no 500, every error body an OperationOutcome, no crash;
- kill -9: each cycle writes acknowledged resources, kills the process mid-stream, restarts
  it, and finds every acknowledged write there.

It is not part of `cargo nextest run` (it needs the release binary and minutes of time); the
integration suite holds the same reproductions as tests (tests/it/security.rs). Figures of
the last run are in SECURITY.md.
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PERSON = "demo-yamada-taro"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    def __init__(self, binary, backend, workdir):
        self.binary, self.backend, self.workdir = binary, backend, workdir
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process = None

    def settings(self):
        args = ["--demo", "--listen", f"127.0.0.1:{self.port}", "--public-base-url", self.base]
        if self.backend == "postgres":
            args += ["--database-url", "postgres://postgres@127.0.0.1:5432/renraku_blackbox"]
        else:
            args += ["--data-dir", os.path.join(self.workdir, "data")]
        return args

    def start(self):
        log = open(os.path.join(self.workdir, "gateway.log"), "ab")
        self.process = subprocess.Popen([self.binary, "serve", *self.settings()], stdout=log, stderr=log)
        for _ in range(600):
            if self.process.poll() is not None:
                raise SystemExit(f"the gateway exited ({self.process.returncode}); see {self.workdir}/gateway.log")
            try:
                if request(self, "GET", "/healthz", token=None)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit("the gateway did not become ready")

    def alive(self):
        return self.process.poll() is None and request(self, "GET", "/healthz", token=None)[0] == 200

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def request(gateway, method, path, token="demo-operator", body=None, headers=None, raw=None, timeout=30):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    all_headers = {"Accept": "application/fhir+json"}
    if data is not None:
        all_headers["Content-Type"] = "application/fhir+json"
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    all_headers.update(headers or {})
    req = urllib.request.Request(gateway.base + path, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def outcome(body):
    """Whether `body` is an OperationOutcome, in JSON or XML."""
    if body.lstrip().startswith(b"<"):
        return b"<OperationOutcome" in body[:300]
    try:
        return json.loads(body).get("resourceType") == "OperationOutcome"
    except (ValueError, AttributeError):
        return False


class Report:
    def __init__(self):
        self.rows, self.failed = [], 0

    def check(self, finding, what, ok, detail=""):
        self.rows.append((finding, what, "ok" if ok else "FAILED", detail))
        if not ok:
            self.failed += 1
        print(f"{'ok    ' if ok else 'FAILED'} {finding:<5} {what} {detail}", flush=True)


def reproductions(gw, report):
    # C1: a deeply nested XML body without a token.
    nested = ('<extension url="http://example.org/x">' * 700) + '<valueString value="x"/>' + ("</extension>" * 700)
    xml = f'<Patient xmlns="http://hl7.org/fhir">{nested}</Patient>'.encode()
    status, body = request(gw, "POST", "/minamiminowa/fhir/Patient", token=None, raw=xml,
                           headers={"Content-Type": "application/fhir+xml"})
    report.check("C1", "nested XML, no token", status == 401 and gw.alive(), f"{status}")
    status, body = request(gw, "POST", "/minamiminowa/fhir/Patient", token="demo-care-manager", raw=xml,
                           headers={"Content-Type": "application/fhir+xml"})
    report.check("C1", "nested XML, with a token", status == 400 and outcome(body) and gw.alive(), f"{status}")
    # C2: a municipal administrator registers a system client for another municipality's Organization.
    client = {"tenant": "minamiminowa", "client_id": f"evil-{uuid.uuid4().hex[:8]}", "kind": "system",
              "organization": "demo-ina-central-hospital", "scopes": "system/*.rs",
              "jwks": {"keys": []}}
    status, body = request(gw, "POST", "/admin/clients", token="demo-admin-minamiminowa", body=client,
                           headers={"Content-Type": "application/json"})
    report.check("C2", "client for another municipality's Organization",
                 status == 422 and b"has no Organization" in body, f"{status}")
    # C2: the administrator reads no clinical content.
    for what, path in [("administrator searches Observations", "/minamiminowa/fhir/Observation"),
                       ("administrator reads the board", f"/minamiminowa/fhir/Communication?subject=Patient/{PERSON}")]:
        status, body = request(gw, "GET", path, token="demo-admin-minamiminowa")
        empty = status == 200 and json.loads(body).get("total") == 0 and "entry" not in json.loads(body)
        report.check("C2", what, status == 403 or empty, f"{status} {body[:80]!r}" if not (status == 403 or empty) else f"{status}, nothing")
    # H4: a Device about the person, written by a team member, hidden from the hospital's EHR.
    device = {"resourceType": "Device", "id": str(uuid.uuid4()), "patient": {"reference": f"Patient/{PERSON}"}}
    status, _ = request(gw, "PUT", f"/ina/fhir/Device/{device['id']}", token="demo-doctor-ina", body=device)
    if status == 201:
        seen, _ = request(gw, "GET", f"/ina/fhir/Device/{device['id']}", token="demo-ehr-ina")
        report.check("H4", "a person's Device, to a client not on the team", seen == 404, f"{seen}")
    else:
        report.check("H4", "team member writes a person's Device", False, f"{status}")
    # M2: create permission alone does not read through If-None-Exist.
    status, body = request(gw, "POST", "/minowa/fhir/Patient", token="demo-nurse-minowa",
                           body={"resourceType": "Patient"}, headers={"If-None-Exist": "name=%E5%B1%B1%E7%94%B0"})
    report.check("M2", "conditional create leaks no stored body", PERSON not in body.decode(errors="replace"), f"{status}")
    # M3: PUT to a hidden taken id and to a free id answer alike.
    taken = request(gw, "PUT", f"/ina/fhir/Patient/{PERSON}", token="demo-ehr-ina",
                    body={"resourceType": "Patient", "id": PERSON})
    free = request(gw, "PUT", "/ina/fhir/Patient/no-such-person",
                   token="demo-ehr-ina", body={"resourceType": "Patient", "id": "no-such-person"})
    same = taken[0] == free[0] and json.loads(taken[1])["issue"][0]["diagnostics"] == json.loads(free[1])["issue"][0]["diagnostics"]
    report.check("M3", "PUT to a hidden id and a free id", same and taken[0] == 422, f"{taken[0]} / {free[0]}")
    # M3: a hidden resource and a missing one answer alike on reads.
    hidden, _ = request(gw, "GET", f"/minowa/fhir/Patient/{PERSON}", token="demo-nurse-minowa")
    missing, _ = request(gw, "GET", "/minowa/fhir/Patient/no-such-person", token="demo-nurse-minowa")
    report.check("M3", "read of a hidden and a missing Patient", hidden == missing == 404, f"{hidden} / {missing}")
    # M7: a query of hundreds of parameters is refused before the database.
    names = "&".join(f"name=a{i}" for i in range(200))
    started = time.time()
    status, body = request(gw, "GET", f"/ina/fhir/Patient?{names}", token="demo-doctor-ina")
    report.check("M7", "200 name parameters", status == 400 and outcome(body) and time.time() - started < 5,
                 f"{status} in {time.time() - started:.2f} s")
    has = "&".join(["_has:Observation:subject:"] * 30) + "code=x"
    status, body = request(gw, "GET", f"/ina/fhir/Patient?{has}", token="demo-doctor-ina")
    report.check("M7", "30-deep _has", status == 400 and outcome(body), f"{status}")
    # Low: invalid percent-encoding, a 414, a NUL in an id.
    # (What once answered a non-OperationOutcome error body: now a search, or a 4xx outcome.)
    status, body = request(gw, "GET", "/ina/fhir/Patient?name=%E3%81", token="demo-doctor-ina")
    report.check("Low", "invalid percent-encoding", status == 200 or (400 <= status < 500 and outcome(body)), f"{status}")
    # Over limits.url_bytes (16 KiB): 414 with an outcome naming the limit. (Beyond 64 KiB the
    # HTTP parser itself answers a bare 414 before the gateway sees the request.)
    status, body = request(gw, "GET", "/ina/fhir/Patient?name=" + "a" * 20_000, token="demo-doctor-ina")
    report.check("Low", "a URL of 20,000 characters", status == 414 and outcome(body) and b"url_bytes" in body, f"{status}")
    try:
        status, body = request(gw, "GET", "/ina/fhir/Patient?name=" + "a" * 200_000, token="demo-doctor-ina")
    except OSError as error:
        status, body = 0, str(error).encode()
    report.check("Low", "a URL of 200,000 characters", status == 414 and gw.alive(), f"{status}")
    status, body = request(gw, "GET", "/ina/fhir/Patient/a%00b", token="demo-doctor-ina")
    report.check("Low", "NUL in an id", status in (400, 404) and outcome(body), f"{status}")
    report.check("all", "process still up after the reproductions", gw.alive())


def mutations(rng):
    """One fuzzed request: (method, path, token, raw body, headers)."""
    tokens = [None, "demo-care-manager", "demo-doctor-ina", "demo-ehr-ina", "demo-nurse-minowa",
              "demo-admin-minamiminowa", "demo-auditor-minamiminowa", "demo-operator", "bogus-token"]
    bases = ["/ina/fhir", "/minamiminowa/fhir", "/minowa/fhir", "/nowhere/fhir", "/admin"]
    types = ["Patient", "Observation", "Communication", "CareTeam", "Consent", "Device", "Binary", "Bundle",
             "AuditEvent", "Contract", "Organization", "Nonsense", "", "%00", "Patient%2F.."]
    pieces = ['{', '}', '[', ']', '"', ':', ',', '\\', '\u0000', 'null', 'true', '1e999', '-0', '"resourceType"',
              '"Patient"', '"id"', '"extension"', '"url"', '"valueString"', '"contained"', '"meta"', 'ｱ', '😀',
              '<', '>', '</', '<Patient xmlns="http://hl7.org/fhir">']
    base = rng.choice(bases)
    kind = rng.choice(types)
    path = f"{base}/{kind}"
    roll = rng.random()
    if roll < 0.2:
        path += "/" + rng.choice([PERSON, "x" * rng.randint(1, 300), "%ZZ", "..", str(uuid.uuid4()), "a%20b"])
    elif roll < 0.4:
        params = rng.choice(["name", "_id", "subject", "_has:Observation:subject:code", "_include", "_revinclude",
                             "_count", "_sort", "date", "birthdate", "_elements", "_summary", "identifier", "x"])
        value = rng.choice(["", "a", "-1", "99999999999", "*", "ge2026", "Patient:organization", "%", "%E3",
                            "a,b,c", "$", "\u30a2" * 50])
        path += f"?{params}={urllib.request.quote(value, safe='%,:*$')}"
    method = rng.choice(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"])
    body = None
    if method in ("POST", "PUT", "PATCH"):
        style = rng.random()
        if style < 0.4:
            resource = {"resourceType": kind or "Patient", "id": rng.choice([PERSON, "x", str(uuid.uuid4())])}
            for _ in range(rng.randint(0, 4)):
                resource[rng.choice(["name", "gender", "subject", "extension", "meta", "contained", "status", "text"])] = \
                    rng.choice([[], {}, "x", 1, None, [{"family": "山田"}], {"reference": f"Patient/{PERSON}"}, "female"])
            body = json.dumps(resource).encode()
        elif style < 0.7:
            body = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 200))).encode("utf-8", errors="replace")
        else:
            depth = rng.randint(1, 3000)
            body = ('{"resourceType":"Patient","extension":[' + '{"url":"u","extension":[' * depth
                    + ']}' * depth + ']}').encode()
    headers = {}
    if body is not None:
        headers["Content-Type"] = rng.choice(["application/fhir+json", "application/json", "application/fhir+xml",
                                              "application/json-patch+json", "text/plain", "image/jpeg"])
    if rng.random() < 0.2:
        headers[rng.choice(["If-Match", "If-None-Exist", "Prefer", "Accept", "If-None-Match"])] = \
            rng.choice(['W/"1"', "garbage", "name=x", "return=representation", "application/fhir+xml", "*"])
    return method, path, rng.choice(tokens), body, headers


def fuzz(gw, report, count, seed):
    rng = random.Random(seed)
    server_errors, non_outcomes, transport = [], [], []
    for i in range(count):
        method, path, token, body, headers = mutations(rng)
        try:
            status, answer = request(gw, method, path, token=token, raw=body, headers=headers, timeout=60)
        except (OSError, urllib.error.URLError) as error:
            transport.append((method, path, str(error)))
            if not gw.alive():
                break
            continue
        if status >= 500:
            server_errors.append((status, method, path, answer[:200]))
        if status >= 400 and method != "HEAD" and not path.startswith("/admin") and answer and not outcome(answer):
            non_outcomes.append((status, method, path, answer[:120]))
    report.check("fuzz", f"{count} requests (seed {seed}): no 5xx", not server_errors, f"{server_errors[:3]}")
    report.check("fuzz", "every FHIR error body an OperationOutcome", not non_outcomes, f"{non_outcomes[:3]}")
    report.check("fuzz", "no dropped connection, process up", not transport and gw.alive(), f"{transport[:3]}")


def kill_cycles(gw, report, cycles):
    acknowledged = []
    lost = []
    for cycle in range(cycles):
        deadline = time.time() + random.uniform(0.3, 1.5)
        while time.time() < deadline:
            identifier = f"kill-{cycle}-{uuid.uuid4().hex[:12]}"
            communication = {"resourceType": "Communication", "status": "completed",
                             "subject": {"reference": f"Patient/{PERSON}"},
                             "identifier": [{"system": "urn:renraku:blackbox", "value": identifier}],
                             "payload": [{"contentString": identifier}]}
            try:
                status, body = request(gw, "POST", "/minamiminowa/fhir/Communication", token="demo-care-manager",
                                       body=communication, timeout=10)
            except OSError:
                break
            if status == 201:
                acknowledged.append(json.loads(body)["id"])
        gw.kill()
        gw.start()
    for id in acknowledged:
        status, _ = request(gw, "GET", f"/minamiminowa/fhir/Communication/{id}", token="demo-care-manager")
        if status != 200:
            lost.append((id, status))
    report.check("kill", f"{cycles} kill -9 cycles, {len(acknowledged)} acknowledged writes: none lost", not lost, f"{lost[:3]}")
    gw.stop()
    database = ["--demo", *gw.settings()[5:]]
    verified = subprocess.run([gw.binary, "audit", "verify", *database], capture_output=True, text=True)
    report.check("kill", "the audit trail verifies after the kills", verified.returncode == 0,
                 (verified.stdout + verified.stderr).strip()[-200:])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "renraku"))
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--fuzz", type=int, default=3000, help="fuzzed requests")
    parser.add_argument("--kills", type=int, default=20, help="kill -9 cycles")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    if args.backend == "postgres":
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", "DROP DATABASE IF EXISTS renraku_blackbox WITH (FORCE)"], check=True)
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", "CREATE DATABASE renraku_blackbox"], check=True)
    workdir = tempfile.mkdtemp(prefix="renraku-blackbox-")
    gw = Gateway(args.binary, args.backend, workdir)
    report = Report()
    try:
        gw.start()
        reproductions(gw, report)
        fuzz(gw, report, args.fuzz, args.seed)
        kill_cycles(gw, report, args.kills)
    finally:
        gw.stop()
    print(f"\n{len(report.rows)} checks, {report.failed} failed ({args.backend}; log in {workdir})")
    if report.failed == 0:
        shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(1 if report.failed else 0)


if __name__ == "__main__":
    main()
