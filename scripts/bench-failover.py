#!/usr/bin/env python3
"""The lease holder with real processes: N `shoal start` release nodes on
loopback (fast profile, node 0 as every node's bootstrap), R rounds. Each
round:

  failover   kill -9 of the lease holder until every survivor names one new
             holder with a higher term (polling /v1/leader every 10 ms)
  migration  kill -9 of a node running tasks until every one of them runs
             on another node (polling the tasks every 10 ms); also from the
             dead verdict (the member's status) to the last move

The killed nodes are restarted on their data dirs after each round (they
rejoin and may become voters again).

Usage: scripts/bench-failover.py [N] [ROUNDS]   (default 5 nodes, 10 rounds)
       STOP=1 scripts/bench-failover.py ...     (the holder leaves with SIGTERM)
Bounded in time; every process it started is killed by its pid (handler
process groups too) at the end. Results go to docs/benchmarks.md by hand.
"""

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "shoal")
DEADLINE = 900  # seconds, for the whole run
# STOP=1: the holder is stopped with SIGTERM (a graceful leave, which hands
# the lease over) instead of killed with -9.
STOP = os.environ.get("STOP") == "1"


def get(api, path):
    with urllib.request.urlopen(f"http://{api}{path}", timeout=5) as r:
        return json.loads(r.read())


def post(api, path, body):
    req = urllib.request.Request(f"http://{api}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def lease(api):
    try:
        l = get(api, "/v1/leader")["leader"]
        return (l["id"], l["term"]) if l else None
    except Exception:
        return None


def main():
    args = sys.argv[1:]
    n = int(args[0]) if args else 5
    rounds = int(args[1]) if len(args) > 1 else 10
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "shoal"], cwd=ROOT, check=True)
    tmp = tempfile.mkdtemp(prefix="shoal-failover-")
    env = dict(os.environ, SHOAL_SECRET=os.urandom(32).hex(), RUST_LOG="warn")
    hold = os.path.join(tmp, "hold")
    os.makedirs(hold)
    log = os.path.join(tmp, "runs.log")
    handler = (f'work=echo "start $SHOAL_TASK_ID $$" >> {log}; '
               f'if [ -e {hold}/$SHOAL_NODE_ID ]; then sleep 600; fi; cat')
    procs = {}
    apis = {}
    ids = {}
    p2p0 = None
    t_end = time.monotonic() + DEADLINE

    def spawn(i):
        out = os.path.join(tmp, f"r{i}")
        open(out, "w").close()
        cmd = [BIN, "start", "--no-mdns", "--profile", "fast", "--api", "127.0.0.1:0",
               "--listen", "/ip4/127.0.0.1/tcp/0", "--data-dir", os.path.join(tmp, f"n{i}"),
               "--handler", handler]
        if p2p0 and i != 0:
            cmd += ["--bootstrap", p2p0]
        procs[i] = subprocess.Popen(cmd, stdout=open(out, "w"), stderr=open(os.path.join(tmp, f"e{i}"), "w"),
                                    env=env)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            text = open(out).read()
            if "api=" in text:
                fields = dict(f.split("=", 1) for f in text.split() if "=" in f)
                apis[i] = fields["api"].removeprefix("http://")
                ids[i] = text.split()[2]
                return fields.get("p2p", "").split(",")[0]
            time.sleep(0.05)
        raise SystemExit(f"node {i} did not start; see {tmp}/e{i}")

    def wait(what, cond, limit=60, step=0.01):
        end = min(time.monotonic() + limit, t_end)
        while time.monotonic() < end:
            v = cond()
            if v:
                return v
            time.sleep(step)
        raise SystemExit(f"timed out waiting for {what}")

    def agreed(nodes, above=0):
        seen = [lease(apis[i]) for i in nodes]
        if seen[0] and seen[0][1] > above and all(s == seen[0] for s in seen):
            return seen[0]
        return None

    failovers, migrations, from_verdict = [], [], []
    try:
        p2p0 = spawn(0)
        for i in range(1, n):
            spawn(i)
        live = list(range(n))
        for r in range(rounds):
            try:
                holder, term = wait("one lease holder", lambda: agreed(live))
            except SystemExit:
                for i in live:
                    try:
                        print(i, ids[i][-8:], get(apis[i], "/v1/leader"))
                    except Exception as e:
                        print(i, e)
                raise
            wait("three voters", lambda: len(get(apis[live[0]], "/v1/leader").get("voters", [])) >= min(3, n))
            # Failover.
            h = next(i for i in live if ids[i] == holder)
            t0 = time.monotonic()
            if STOP:
                procs[h].send_signal(signal.SIGTERM)  # leaves, handing the lease over
            else:
                procs[h].kill()
            rest = [i for i in live if i != h]
            new = wait("a new holder", lambda: agreed(rest, term))
            failovers.append(time.monotonic() - t0)
            procs[h].wait(timeout=60)
            # Migration: a node (not the holder) running held tasks.
            v = next(i for i in rest if ids[i] != new[0])
            open(os.path.join(hold, ids[v]), "w").close()
            tasks = [post(apis[rest[0]], "/v1/tasks", {"capability": "work", "payload": k,
                                                        "strategy": "round_robin"})["id"]
                     for k in range(2 * len(rest))]

            def running_on_victim():
                mine = []
                for t in tasks:
                    s = get(apis[rest[0]], f"/v1/tasks/{t}")
                    if s["status"] == "running" and s["node"] == ids[v]:
                        mine.append(t)
                return mine if len(mine) >= 1 else None
            mine = wait("tasks running on the victim", running_on_victim)
            t1 = time.monotonic()
            procs[v].kill()
            procs[v].wait()
            others = [i for i in rest if i != v]
            verdict = {}

            def moved():
                if "at" not in verdict:
                    st = get(apis[others[0]], f"/v1/nodes/{ids[v]}")["status"]
                    if st == "dead":
                        verdict["at"] = time.monotonic()
                for t in mine:
                    s = get(apis[others[0]], f"/v1/tasks/{t}")
                    if s["node"] == ids[v] or s["status"] not in ("running", "succeeded"):
                        return None
                return True
            wait("the tasks to run elsewhere", moved)
            t2 = time.monotonic()
            migrations.append(t2 - t1)
            if "at" in verdict:
                from_verdict.append(t2 - verdict["at"])
            os.remove(os.path.join(hold, ids[v]))
            print(f"round {r + 1}: failover {failovers[-1] * 1000:.0f} ms (term {term} -> {new[1]}); "
                  f"kill -9 to {len(mine)} task(s) running elsewhere {migrations[-1] * 1000:.0f} ms"
                  + (f" ({from_verdict[-1] * 1000:.0f} ms after the dead verdict)" if "at" in verdict else ""),
                  flush=True)
            # Restart both on their data dirs.
            for i in (h, v):
                spawn(i)
            wait("everyone alive", lambda: all(
                sum(1 for m in get(apis[i], "/v1/nodes")["nodes"] if m["status"] == "alive") == n
                for i in live), limit=60)
        q = lambda xs: (statistics.median(xs) * 1000, max(xs) * 1000)
        print(f"failover: median {q(failovers)[0]:.0f} ms, max {q(failovers)[1]:.0f} ms over {len(failovers)} rounds")
        print(f"migration (kill -9 to running elsewhere): median {q(migrations)[0]:.0f} ms, "
              f"max {q(migrations)[1]:.0f} ms")
        if from_verdict:
            print(f"migration (dead verdict seen by the API poll to running elsewhere): median "
                  f"{q(from_verdict)[0]:.0f} ms, max {q(from_verdict)[1]:.0f} ms")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
        try:
            for line in open(log):
                parts = line.split()
                if len(parts) >= 3 and parts[2].isdigit() and int(parts[2]) > 1:
                    # `--`: without it procps' kill reads -PGID as an option.
                    subprocess.run(["kill", "-KILL", "--", f"-{parts[2]}"], stderr=subprocess.DEVNULL)
        except FileNotFoundError:
            pass


if __name__ == "__main__":
    main()
