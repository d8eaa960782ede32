#!/usr/bin/env python3
"""A/B runs of one workload of the HTTP benchmark (benches/over_http.py) between builds.

    python3 benches/ab.py --binaries /tmp/renraku-old,target/profiling/renraku \\
        --workload "read by id" --rounds 3 [--backend postgres] [--audit-off] [--as-ceiling]

Writes one world (`renraku bench-world --sizes 1,SIZE`, the measured persons registered
through the API by the first build), keeps it as a template, and for every round runs each
build in turn — the order alternating between rounds — on a fresh copy of the template (a
copied data directory on SQLite, `CREATE DATABASE … TEMPLATE` on PostgreSQL): every run
starts from the same data, so the database's growth during a run does not favour the build
that runs first. Prints each run and each build's mean, with the gateway's CPU time a request (summed over its threads, from
`/proc/<pid>/task/*/schedstat`; steadier than the rate on a machine whose speed drifts,
though a thread that ended during the run is not counted). Both builds must read the same
schema (no migration between them).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import over_http  # noqa: E402

ADMIN = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc"]


def cpu_ns(pid):
    """The CPU time the gateway's threads have used so far (`/proc/<pid>/task/*/schedstat`)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as schedstat:
                total += int(schedstat.read().split()[0])
        except OSError:
            pass  # a thread that ended meanwhile
    return total


def settings_for(arguments, directory, database):
    settings = ["--demo", "--data-dir", directory]
    if arguments.backend == "postgres":
        settings += ["--database-url", f"postgres://postgres@127.0.0.1:5432/{database}"]
    return settings


def fresh_copy(arguments, template_directory, template_database, name):
    directory = tempfile.mkdtemp(prefix=f"renraku-ab-{name}-")
    shutil.rmtree(directory)
    shutil.copytree(template_directory, directory)
    database = f"renraku_ab_{name}"
    if arguments.backend == "postgres":
        over_http.run(ADMIN + [f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'])
        over_http.run(ADMIN + [f'CREATE DATABASE "{database}" TEMPLATE "{template_database}"'])
    return directory, database


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binaries", required=True, help="comma-separated paths of the builds to compare")
    parser.add_argument("--workload", required=True, help="a workload's name in over_http.workloads")
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--size", type=int, default=20000, help="the persons the measured actor reaches")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--port", type=int, default=18090)
    parser.add_argument("--audit-off", action="store_true", help="run the gateway with the audit trail off")
    parser.add_argument("--as-ceiling", action="store_true", help="send the unrestricted test principal's token (the ceiling)")
    arguments = parser.parse_args()
    binaries = [os.path.abspath(b) for b in arguments.binaries.split(",")]

    template = tempfile.mkdtemp(prefix="renraku-ab-template-")
    template_database = "renraku_ab_template"
    if arguments.backend == "postgres":
        over_http.run(ADMIN + [f'DROP DATABASE IF EXISTS "{template_database}" WITH (FORCE)'])
        over_http.run(ADMIN + [f'CREATE DATABASE "{template_database}"'])
    settings = settings_for(arguments, template, template_database)
    environment = dict(os.environ, RENRAKU_LOG="warn")
    lines = subprocess.run([binaries[0], "bench-world", *settings, "--tenant", over_http.TENANT, "--sizes", f"1,{arguments.size}"],
                           check=True, capture_output=True, text=True, env=environment).stdout
    actors = [json.loads(line) for line in lines.splitlines() if line.startswith("{")]
    actor = next(a for a in actors if a["size"] == arguments.size and a["label"] != "unrestricted")
    over_http.BINARY = binaries[0]
    gateway = over_http.Gateway(settings, arguments.port, audit_off=False)
    try:
        over_http.register_measured(gateway.base, actor)
    finally:
        gateway.stop()
    token = next(a for a in actors if a["label"] == "unrestricted")["token"] if arguments.as_ceiling else actor["token"]
    workload = next((w for w in over_http.workloads(actor) if w[0] == arguments.workload), None)
    if workload is None:
        raise SystemExit(f"no workload named {arguments.workload!r}")
    _, method, path, body = workload

    rates = {binary: [] for binary in binaries}
    cpu = {binary: [] for binary in binaries}
    try:
        for round_number in range(arguments.rounds):
            order = binaries if round_number % 2 == 0 else binaries[::-1]
            for binary in order:
                directory, database = fresh_copy(arguments, template, template_database, "run")
                over_http.BINARY = binary
                gateway = over_http.Gateway(settings_for(arguments, directory, database), arguments.port, audit_off=arguments.audit_off)
                try:
                    before = cpu_ns(gateway.process.pid)
                    result = over_http.wrk(gateway.base, token, method, path, body, arguments, directory,
                                           settings_for(arguments, directory, database))
                    result["cpu_us"] = (cpu_ns(gateway.process.pid) - before) / 1000 / max(result["requests"], 1)
                finally:
                    gateway.stop()
                    shutil.rmtree(directory, ignore_errors=True)
                rates[binary].append(result["rate"])
                cpu[binary].append(result["cpu_us"])
                print(f"round {round_number + 1} {binary}: {result['rate']:.0f} req/s  p50 {result['p50']:.2f} ms  p99 {result['p99']:.2f} ms"
                      f"  projected {result['drain']:.1f} s after"
                      f"  gateway CPU {result['cpu_us']:.0f} µs a request",
                      file=sys.stderr)
                time.sleep(1)
    finally:
        shutil.rmtree(template, ignore_errors=True)
    print(f"\n{arguments.backend}, {arguments.workload}, {'ceiling' if arguments.as_ceiling else f'actor reaching {arguments.size}'}"
          f"{', trail off' if arguments.audit_off else ''}, {arguments.rounds} rounds of {arguments.duration} s:")
    for binary in binaries:
        values = rates[binary]
        print(f"  {binary}: mean {sum(values) / len(values):,.0f} req/s  ({', '.join(f'{v:,.0f}' for v in values)}); "
              f"gateway CPU {sum(cpu[binary]) / len(cpu[binary]):.0f} µs a request")


if __name__ == "__main__":
    main()
