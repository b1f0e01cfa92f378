#!/usr/bin/env python3
"""One node's start: spawn a release `shoal start` (no mDNS, loopback, data
dir on tmpfs), wait until its API answers, then print the wall time to
ready, the CPU it spent (summed over its threads from
/proc/PID/task/*/schedstat) at ready and 2 s later, and its memory from
/proc/PID/smaps_rollup (RSS, PSS, anonymous, anonymous huge pages). Linux
only.

Usage: scripts/bench-start.py [RUNS]   (SHOAL_BIN=PATH for A/B runs)
Each node is stopped by its pid and its data dir removed. Results go to
docs/benchmarks.md by hand.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("SHOAL_BIN") or os.path.join(ROOT, "target", "release", "shoal")


def cpu_ms(pid):
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{t}/schedstat") as f:
            total += int(f.read().split()[0])
    return total / 1e6


def one():
    d = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None, prefix="shoal-start-")
    env = dict(os.environ, SHOAL_SECRET="ab" * 32, RUST_LOG="warn")
    p = subprocess.Popen([BIN, "start", "--no-mdns", "--api", "127.0.0.1:0",
                          "--listen", "/ip4/127.0.0.1/tcp/0", "--data-dir", os.path.join(d, "n")],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    try:
        t0 = time.monotonic()
        api = None
        while api is None:
            line = p.stdout.readline()
            if not line or time.monotonic() - t0 > 10:
                raise SystemExit("the node did not print its ready line within 10 s")
            m = re.search(r"api=http://(127\.0\.0\.1:\d+)", line)
            api = m and m.group(1)
        while True:
            try:
                urllib.request.urlopen(f"http://{api}/v1/status", timeout=1).read()
                break
            except OSError:
                if time.monotonic() - t0 > 10:
                    raise SystemExit("the API did not answer within 10 s")
                time.sleep(0.001)
        ready = (time.monotonic() - t0) * 1000
        at_ready = cpu_ms(p.pid)
        time.sleep(2)  # a sampling interval: the idle cost after ready
        later = cpu_ms(p.pid)
        with open(f"/proc/{p.pid}/smaps_rollup") as f:
            sm = f.read()
        mib = lambda k: int(re.search(k + r":\s+(\d+)", sm).group(1)) / 1024
        print(f"ready {ready:.0f} ms; CPU at ready {at_ready:.1f} ms, 2 s later {later:.1f} ms; "
              f"RSS {mib('Rss'):.1f} MiB, PSS {mib('Pss'):.1f}, anonymous {mib('Anonymous'):.1f}, "
              f"of which huge pages {mib('AnonHugePages'):.1f}")
    finally:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        shutil.rmtree(d, ignore_errors=True)


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    if not os.environ.get("SHOAL_BIN"):
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "shoal"], cwd=ROOT, check=True)
    for _ in range(runs):
        one()


if __name__ == "__main__":
    main()
