"""Shared by the benchmark scripts: waiting for a started gateway to answer."""

import time
import urllib.request


def wait_until_healthy(base, tries=600):
    """Polls `base`/healthz every 0.1 s until it answers (at most `tries` times)."""
    for _ in range(tries):
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"the gateway at {base} did not become healthy")
