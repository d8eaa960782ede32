#!/usr/bin/env python3
"""The SS-MIX2 import benchmark (issue #18): messages/s through the gateway, over loopback.

    python3 benches/ssmix2_import.py                       # SQLite in a temporary directory
    python3 benches/ssmix2_import.py --backend postgres    # database renraku_bench_import on 127.0.0.1:5432

It writes a standardized storage of --patients persons x --messages messages (one ADT-00,
one PPR-01, the rest OMP-01 orders of two drugs each; ISO-2022-JP, SS-MIX2's layout and
file names, generated here with Python's iso2022_jp codec), starts `renraku serve --demo`
and runs `renraku import ssmix2` as the demo hospital's Backend Services client
(demo-ehr-ina, its demo key): first the ADT-00 files (the hospital registers the persons),
then — after putting the hospital on each person's support team through the API, which the
access rule requires for clinical data — the clinical files, then everything again with the
import's memory lost (every resource unchanged). Prints a Markdown table.

The binary is target/release/renraku, or target/$RENRAKU_BENCH_PROFILE/renraku (e.g.
`profiling`, the incremental release-like build); build it first
(`cargo build --release --bin renraku`).
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from healthz import wait_until_healthy  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROFILE = os.environ.get("RENRAKU_BENCH_PROFILE", "release")
BINARY = os.environ.get("RENRAKU_BENCH_BINARY") or os.path.join(ROOT, "target", PROFILE, "renraku")
FACILITY = "2010012345"
PATIENT_SYSTEM = "urn:oid:1.2.392.100495.20.3.51.1" + FACILITY
HOSPITAL = "Organization/demo-ina-central-hospital"
FAMILIES = ["宮本", "田中", "伊藤", "小林", "中村", "山田", "佐々木", "松本", "井上", "木村"]
GIVENS = ["京子", "五郎", "一郎", "花子", "真一", "美咲", "健太", "陽子", "万里", "直樹"]


def msh(kind, control):
    return f"MSH|^~\\&|HIS|{FACILITY}|GW|RCV|20240401090000||{kind}|{control}|P|2.5||||||~ISO IR87||ISO 2022-1994\r"


def write(root, patient, date, data_type, order, occurred, text):
    directory = os.path.join(root, patient[:3], patient[3:6], patient, date, data_type)
    os.makedirs(directory, exist_ok=True)
    department = "-" if date == "-" else "01"
    name = f"{patient}_{date}_{data_type}_{order}_{occurred}_{department}_1"
    with open(os.path.join(directory, name), "wb") as file:
        file.write(text.encode("iso2022_jp"))


def storage(adt_root, clinical_root, patients, messages):
    for n in range(patients):
        patient = f"{n + 1:07d}"
        family, given = FAMILIES[n % 10], GIVENS[(n // 10) % 10]
        write(adt_root, patient, "-", "ADT-00", "999999999999999", f"20240401{n % 24:02d}0000000",
              msh("ADT^A08^ADT_A01", f"A{patient}")
              + f"PID|0001||{patient}^^^^PI||{family}^{given}^^^^^L^I||19{30 + n % 60:02d}0405|{'MF'[n % 2]}|||^^^^3960021^JPN^H^長野県伊那市\r")
        write(clinical_root, patient, "-", "PPR-01", "999999999999999", "20240401100000000",
              msh("PPR^ZD1^PPR_ZD1", f"P{patient}") + f"PID|0001||{patient}^^^^PI\r"
              + f"PRB|AD|20240401|20054174^胃炎^MDCDX2|P{patient}|||20240315||||||||N^回復せず^HL70241||20240301|胃炎\r")
        for order in range(messages - 2):
            number = f"{n:09d}{order:06d}"
            drugs = ""
            for rp, (code, name) in enumerate([("108665201", "ダーゼン錠５ｍｇ"), ("103835401", "ムコダイン錠２５０ｍｇ")], start=1):
                drugs += (f"ORC|NW|{number}||{rp}|||||20240401103045|058^入力^花子||110^田中^一郎\r"
                          f"RXE||{code}^{name}^HOT9|{1 + order % 3}||TAB^錠^MR9P|||||15|TAB^錠^MR9P||||||||||||||||||||20240401103045\r"
                          "TQ1|1||1013044400000000&内服・経口・１日３回朝昼夕食後&JAMISDP01|||5^d|20240401\r"
                          "RXR|PO^口^HL70162\r")
            write(clinical_root, patient, "20240401", "OMP-01", number, f"202404011{order % 10}0000000",
                  msh("RDE^O11^RDE_O11", f"O{number}") + f"PID|0001||{patient}^^^^PI\r" + drugs)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, body, token):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"})
    with urllib.request.urlopen(request, timeout=300) as reply:
        return json.load(reply)


def import_storage(base, root, state, jobs):
    started = time.monotonic()
    result = subprocess.run(
        [BINARY, "import", "ssmix2", "--base", f"{base}/ina/fhir", "--client-id", "demo-ehr-ina",
         "--key", os.path.join(ROOT, "demo/keys/ehr-ina-rs384.pem"), "--kid", "ehr-ina-rs384",
         "--facility", FACILITY, "--organization", HOSPITAL, "--state", state, "--quiet", "--jobs", str(jobs), root],
        capture_output=True, text=True, env=dict(os.environ, RENRAKU_LOG="warn"))
    seconds = time.monotonic() - started
    summary = result.stdout
    if result.returncode != 0:
        sys.exit(f"the import failed:\n{summary}{result.stderr}")
    number = lambda label: int(re.search(label + r"\s*(\d+)", summary).group(1))
    return seconds, number("messages converted:"), number("created:"), number("unchanged:")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=4, help="persons the import sends side by side (its --jobs)")
    arguments = parser.parse_args()
    if not os.path.exists(BINARY):
        sys.exit(f"{BINARY} is missing: build it first (cargo build --release --bin renraku)")
    directory = tempfile.mkdtemp(prefix="renraku-import-bench-")
    if arguments.backend == "postgres":
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", "DROP DATABASE IF EXISTS renraku_bench_import"], check=True)
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", "CREATE DATABASE renraku_bench_import"], check=True)
        database = "postgres://postgres@127.0.0.1:5432/renraku_bench_import"
    else:
        database = f"sqlite://{directory}/renraku.db?mode=rwc"
    adt_root, clinical_root = os.path.join(directory, "adt"), os.path.join(directory, "clinical")
    storage(adt_root, clinical_root, arguments.patients, arguments.messages)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(os.path.join(directory, "gateway.log"), "w")
    gateway = subprocess.Popen([BINARY, "serve", "--demo", "--database-url", database, "--data-dir", directory,
                                "--listen", f"127.0.0.1:{port}", "--public-base-url", base],
                               env=dict(os.environ, RENRAKU_LOG="warn"), stdout=log, stderr=log)
    try:
        wait_until_healthy(base)
        print(f"\n{arguments.backend}, {arguments.patients} persons x {arguments.messages} messages, --jobs {arguments.jobs} ({os.path.basename(os.path.dirname(BINARY))} build)\n")
        print("| phase | messages | seconds | messages/s | resources created | unchanged |")
        print("|---|---:|---:|---:|---:|---:|", flush=True)

        def show(phase, messages, seconds, created, unchanged):
            print(f"| {phase} | {messages:,} | {seconds:.1f} | {messages / seconds:,.0f} | {created:,} | {unchanged:,} |", flush=True)

        rows = []
        seconds, converted, created, unchanged = import_storage(base, adt_root, os.path.join(directory, "adt.state"), arguments.jobs)
        rows.append(("ADT-00 (registers each person)", converted, seconds, created, unchanged))
        show(*rows[-1])
        # The hospital joins each person's support team (100 CareTeams a transaction, each
        # naming its person by identifier).
        for start in range(0, arguments.patients, 100):
            entries = [{"resource": {"resourceType": "CareTeam", "status": "active",
                                     "subject": {"reference": f"Patient?identifier={PATIENT_SYSTEM}|{n + 1:07d}"},
                                     "participant": [{"member": {"reference": HOSPITAL}}]},
                        "request": {"method": "POST", "url": "CareTeam"}}
                       for n in range(start, min(start + 100, arguments.patients))]
            post(f"{base}/ina/fhir", {"resourceType": "Bundle", "type": "transaction", "entry": entries}, "demo-ehr-ina")
        seconds, converted, created, unchanged = import_storage(base, clinical_root, os.path.join(directory, "clinical.state"), arguments.jobs)
        rows.append(("PPR-01 and OMP-01", converted, seconds, created, unchanged))
        show(*rows[-1])
        total = sum(r[1] for r in rows), sum(r[2] for r in rows)
        seconds_a, converted_a, created_a, unchanged_a = import_storage(base, adt_root, os.path.join(directory, "again-a.state"), arguments.jobs)
        seconds_b, converted_b, created_b, unchanged_b = import_storage(base, clinical_root, os.path.join(directory, "again-b.state"), arguments.jobs)
        show("everything again, memory lost (unchanged)", converted_a + converted_b, seconds_a + seconds_b,
             created_a + created_b, unchanged_a + unchanged_b)
        print(f"| first import, all | {total[0]:,} | {total[1]:.1f} | {total[0] / total[1]:,.0f} | | |")
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=60)
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
