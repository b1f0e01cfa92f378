#!/usr/bin/env python3
"""Membership at scale with real processes: N `shoal start` release nodes on
loopback (fast profile by default, node 0 as every node's bootstrap), watched
through each node's /v1/events stream. Prints:

  join       first joiner spawned until every node lists N alive; the CPU
             all nodes spent until then; refutations (incarnations above 1)
  idle       CPU of all nodes over 10 s, RSS per node
  false      suspect/dead events about live nodes (join and idle)
  write      one knowledge write until every other node merged it (x20)
  detection  kill -9 of one node until every survivor saw it suspect / dead

Usage: scripts/bench-membership.py [N] [--profile fast|lan] [--hog] [--quiet SECS] [--timeline]
                                   [--writes K] [--perf FILE [--perf-phase join|write]]
(--timeline prints, each second of the join, the fewest and the mean members
the nodes list alive and the suspicions raised; --hog runs a CPU hog on both
cores from the idle phase on; --quiet watches for false suspicions over SECS
more seconds before the write and detection phases; --writes sets how many
writes the write phase makes (20); --perf records a system-wide `perf`
profile of the write phase (or of the join, with --perf-phase join) into FILE (PERF_ARGS adds perf options, such as
"--call-graph dwarf"); KEEP_LOGS=1 keeps the nodes' logs and data dirs; SHOAL_BIN=PATH runs
that executable instead of building target/release/shoal, for A/B runs).
Bounded in time; every process it started is killed by its pid at the end.
Results go to docs/benchmarks.md by hand.
"""

import concurrent.futures
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("SHOAL_BIN") or os.path.join(ROOT, "target", "release", "shoal")
DEADLINE = 1200  # seconds, for the whole run


def main():
    args = sys.argv[1:]
    n = int(args[0]) if args and args[0].isdigit() else 100
    profile = args[args.index("--profile") + 1] if "--profile" in args else "fast"
    hog = "--hog" in args
    quiet = int(args[args.index("--quiet") + 1]) if "--quiet" in args else 0
    timeline = "--timeline" in args
    writes = int(args[args.index("--writes") + 1]) if "--writes" in args else 20
    perf_out = args[args.index("--perf") + 1] if "--perf" in args else None
    perf_phase = args[args.index("--perf-phase") + 1] if "--perf-phase" in args else "write"

    def perf_start(phase):
        if not perf_out or phase != perf_phase:
            return None
        extra = os.environ.get("PERF_ARGS", "").split()  # e.g. "--call-graph dwarf"
        p = subprocess.Popen(["perf", "record", "-a", "-F", "999", "-o", perf_out, "--quiet"] + extra,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        return p

    def perf_stop(p):
        if p:
            p.send_signal(signal.SIGINT)
            p.wait(timeout=60)
    if not os.environ.get("SHOAL_BIN"):
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "shoal"], cwd=ROOT, check=True)
    tmp = tempfile.mkdtemp(prefix="shoal-bench-")
    env = dict(os.environ, SHOAL_SECRET=os.urandom(32).hex(), RUST_LOG="warn")
    procs, hogs = [], []
    started = time.monotonic()

    def spawn(i, bootstrap):
        out = open(os.path.join(tmp, f"r{i}"), "w")
        err = open(os.path.join(tmp, f"e{i}"), "w")
        cmd = [BIN, "start", "--no-mdns", "--profile", profile, "--api", "127.0.0.1:0",
               "--listen", "/ip4/127.0.0.1/tcp/0", "--data-dir", os.path.join(tmp, f"n{i}")]
        if bootstrap:
            cmd += ["--bootstrap", bootstrap]
        procs.append(subprocess.Popen(cmd, stdout=out, stderr=err, env=env))

    def ready(i, limit=30):
        end = time.monotonic() + limit
        while time.monotonic() < end:
            text = open(os.path.join(tmp, f"r{i}")).read()
            if "api=" in text:
                fields = dict(f.split("=", 1) for f in text.split() if "=" in f)
                return fields["api"], fields.get("p2p", "").split(",")[0]
            time.sleep(0.05)
        raise SystemExit(f"node {i} did not start; see {tmp}/e{i}")

    try:
        spawn(0, None)
        api0, p2p0 = ready(0)
        apis = [api0]
        watchers = [Watcher(api0)]
        perf = perf_start("join")
        t_first = time.monotonic()
        for i in range(1, n):
            spawn(i, p2p0)
        # Each node is watched as soon as it says where its API is, from a
        # pool of threads: subscribing one after the other, 3 requests per
        # node to nodes busy joining, took up to 10 s for 100 nodes, and a
        # node first watched after it had joined counts as joined only then.
        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
            def watch(i):
                api, _ = ready(i)
                return api, time.monotonic(), Watcher(api)
            made = list(pool.map(watch, range(1, n)))
        t_api = max(t for _, t, _ in made) - t_first
        apis += [api for api, _, _ in made]
        watchers += [w for _, _, w in made]
        late = sum(1 for w in watchers[1:] if w.first_alive >= n)
        print(f"spawn: every node ready (API answering) {t_api:.2f} s after the first joiner "
              f"was spawned, every node watched {time.monotonic() - t_first:.2f} s"
              + (f"; answers retried, by status: {RETRIED}" if RETRIED else "")
              + (f"; {late} nodes listed {n} alive when first watched (their join time is "
                 "when they were watched)" if late else ""))
        ids = [w.me for w in watchers]
        # Join: every node lists n alive.
        end = time.monotonic() + 120
        next_line, last_verdicts = time.monotonic(), 0
        while time.monotonic() < end and not all(w.alive_count() >= n for w in watchers):
            if timeline and time.monotonic() >= next_line:
                alive = [w.alive_count() for w in watchers]
                known = [w.known_count() for w in watchers]
                verdicts = sum(w.false_verdicts(set()) for w in watchers)
                print(f"  t={time.monotonic() - t_first:5.1f} s  alive min {min(alive)} "
                      f"mean {statistics.mean(alive):.1f}  alone {sum(a <= 1 for a in alive)}  "
                      f"alive or suspect min {min(known)}  "
                      f"suspicions this second {verdicts - last_verdicts}", flush=True)
                next_line, last_verdicts = next_line + 1, verdicts
            time.sleep(0.05)
        perf_stop(perf)
        joined = [w.all_alive_at(n) for w in watchers]
        if None in joined:
            short = [(i, w.alive_count(), w.broken) for i, w in enumerate(watchers)
                     if w.alive_count() < n]
            print(f"join: NOT every node saw {n} alive within 120 s "
                  f"(node, alive, broken streams: {short[:5]})")
        else:
            t = [j - t_first for j in joined]
            print(f"join: {max(t):.2f} s until every node listed {n} alive "
                  f"(per node p50 {statistics.median(t):.2f} s)")
        join_cpu = sum(cpu(p.pid) for p in procs)
        false_join = sum(w.false_verdicts(set()) for w in watchers)
        print(f"false suspicions during the join: {false_join}")
        # A fresh node starts at incarnation 1; each refutation (of a
        # suspicion or a verdict about itself) writes its record again, one
        # incarnation higher, and gossips it to every node.
        incs = [m["incarnation"] for m in get_retrying(api0, "/v1/nodes")["nodes"]]
        print(f"join CPU: {join_cpu:.1f} CPU-s for {n} nodes ({join_cpu / n * 1000:.0f} ms per node) "
              f"in {time.monotonic() - t_first:.1f} s; refutations (records written again): "
              f"{sum(i - 1 for i in incs)}, by {sum(i > 1 for i in incs)} nodes, max {max(incs) - 1}")
        time.sleep(5)
        if hog:
            hogs = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(2)]
        # Idle cost.
        before = sum(cpu(p.pid) for p in procs)
        time.sleep(10)
        after = sum(cpu(p.pid) for p in procs)
        mem = [rss_mib(p.pid) for p in procs]
        rss, pss, anon = ([m[i] for m in mem] for i in range(3))
        print(f"idle: {after - before:.2f} CPU-s per 10 s for {n} nodes; RSS per node "
              f"mean {statistics.mean(rss):.1f} MiB, max {max(rss):.1f} MiB; PSS mean "
              f"{statistics.mean(pss):.1f} MiB, max {max(pss):.1f}; anonymous mean "
              f"{statistics.mean(anon):.1f} MiB, max {max(anon):.1f}"
              + (" (with a CPU hog on both cores)" if hog else ""))
        false = sum(w.false_verdicts(set()) for w in watchers)
        print(f"false suspicions after the join (15 s): {false - false_join}")
        # A node outside every gossip mesh gets each write only by gossip's
        # lazy push (IHAVE at a heartbeat): hundreds of ms late.
        meshes = [mesh_size(a) for a in apis]
        print(f"gossip mesh per node: min {min(meshes)}, p50 {sorted(meshes)[n // 2]}, "
              f"max {max(meshes)}; nodes in no mesh: {sum(m == 0 for m in meshes)}")
        if quiet:
            before = false
            time.sleep(quiet)
            false = sum(w.false_verdicts(set()) for w in watchers)
            print(f"false suspicions in {quiet} s more of quiet: {false - before}"
                  + (" (with a CPU hog on both cores)" if hog else ""))
        # Write propagation, and what it costs: the CPU all nodes (and this
        # script, whose watchers parse every node's events) spend in the
        # write phase above their idle rate, per write.
        idle_rate = (after - before) / 10
        perf = perf_start("write")
        w_cpu0, w_self0, w_t0 = sum(cpu(p.pid) for p in procs), self_cpu(), time.monotonic()
        lat, spread = [], []
        lagging = {j: 0 for j in range(n)}
        for k in range(writes):
            src = random.randrange(n)
            key = f"k{k}-{random.getrandbits(32)}"
            t0 = time.monotonic()
            put(apis[src], f"/v1/kv/bench/{key}", {"value": k})
            end = time.monotonic() + 10
            while time.monotonic() < end:
                seen = [w.merged.get(key) for j, w in enumerate(watchers) if j != src]
                if all(seen):
                    lat.append(max(seen) - t0)
                    spread.append(sorted(x - t0 for x in seen))
                    last = max(range(len(seen)), key=lambda j: seen[j])
                    lag = seen[last] - sorted(seen)[len(seen) // 2]
                    if lag > 0.1:
                        # Reached 100 ms after the median node: by gossip's
                        # lazy push (IHAVE at a heartbeat), not by the mesh.
                        lagging[[j for j in range(n) if j != src][last]] += 1
                    break
                time.sleep(0.002)
        w_wall = time.monotonic() - w_t0
        perf_stop(perf)
        w_cpu = sum(cpu(p.pid) for p in procs) - w_cpu0 - idle_rate * w_wall
        w_self = self_cpu() - w_self0
        lat.sort()
        if lat:
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
            print(f"write: to every node p50 {statistics.median(lat) * 1000:.1f} ms, "
                  f"p99 {p99 * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms ({len(lat)}/{writes} writes)")
            worst = max(spread, key=lambda s: s[-1])
            q = lambda f: worst[min(len(worst) - 1, int(len(worst) * f))] * 1000
            print(f"  slowest write, by node: first {q(0):.1f} ms, p50 {q(0.5):.1f} ms, "
                  f"p90 {q(0.9):.1f} ms, last {q(1):.1f} ms")
            for j, count in sorted(lagging.items(), key=lambda x: -x[1])[:3]:
                if count:
                    print(f"  node {j} reached over 100 ms after the median node in {count} "
                          f"writes; {mesh_line(apis[j])}")
            print(f"  CPU per write above idle: nodes {w_cpu / writes * 1000:.0f} ms "
                  f"({w_cpu / writes / n * 1000:.2f} ms per node), this script {w_self / writes * 1000:.0f} ms; "
                  f"write phase {w_wall:.1f} s")
        # Detection.
        victim = random.randrange(1, n)
        vid = ids[victim]
        t0 = time.monotonic()
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait()
        survivors = [w for j, w in enumerate(watchers) if j != victim]
        end = time.monotonic() + 60
        while time.monotonic() < end and not all(vid in w.dead for w in survivors):
            time.sleep(0.02)
        dead = [w.dead.get(vid) for w in survivors]
        sus = [w.suspect.get(vid) or w.dead.get(vid) for w in survivors]
        if None in dead:
            print(f"detection: {sum(d is not None for d in dead)}/{len(survivors)} survivors saw dead within 60 s")
        else:
            print(f"detection: every survivor saw suspect by {max(sus) - t0:.2f} s, "
                  f"dead by {max(dead) - t0:.2f} s (first dead {min(dead) - t0:.2f} s)")
        false = sum(w.false_verdicts({vid}) for w in survivors)
        print(f"false suspicions in the whole run: {false}")
        print(f"(run took {time.monotonic() - started:.0f} s; logs in {tmp} until exit)")
    finally:
        for p in hogs + procs:
            if p.poll() is None:
                p.kill()
        for p in hogs + procs:
            p.wait()
        if os.environ.get("KEEP_LOGS"):
            print(f"logs and data dirs kept in {tmp}")
        else:
            subprocess.run(["rm", "-rf", tmp])


def wall_to_mono(wall):
    return wall - time.time() + time.monotonic()


def mesh_line(api):
    """A node's gossipsub mesh and connections, from its metrics."""
    try:
        with urllib.request.urlopen(f"{api}/metrics", timeout=10) as r:
            text = r.read().decode()
    except Exception as e:
        return f"metrics unreadable ({e})"
    keep = [line for line in text.splitlines()
            if not line.startswith("#") and ("mesh_peer_counts" in line
                                             or "peers_per_protocol" in line
                                             or "mesh_peer_churn" in line
                                             or "mesh_peer_inclusion" in line
                                             or "shoal_connections" in line
                                             or "shoal_peers" in line)]
    return "; ".join(keep) or "no mesh metrics"


def mesh_size(api):
    """A node's gossipsub mesh size for Shoal's topic (-1 if unreadable)."""
    try:
        with urllib.request.urlopen(f"{api}/metrics", timeout=10) as r:
            text = r.read().decode()
    except Exception:
        return -1
    return sum(int(float(line.split()[-1])) for line in text.splitlines()
               if line.startswith("shoal_gossipsub_mesh_peer_counts{"))


def get(api, path):
    with urllib.request.urlopen(f"{api}{path}", timeout=10) as r:
        return json.load(r)


RETRIED = {}  # HTTP status -> answers retried by get_retrying


def get_retrying(api, path, tries=20):
    """`get`, retried for a few seconds on an error answer (a node that just
    started, on a loaded machine, may answer 503 for a moment)."""
    for i in range(tries):
        try:
            return get(api, path)
        except urllib.error.HTTPError as e:
            if i == tries - 1:
                raise
            RETRIED[e.code] = RETRIED.get(e.code, 0) + 1
            time.sleep(0.25)


def put(api, path, body):
    req = urllib.request.Request(f"{api}{path}", data=json.dumps(body).encode(), method="PUT",
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        r.read()


def cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu():
    """CPU-s this script has spent (all its threads)."""
    t = os.times()
    return t.user + t.system


def rss_mib(pid):
    """Resident memory in MiB: (RSS, PSS, anonymous). RSS counts every page
    of the executable a process touched, though the N processes share them;
    PSS divides each shared page among its sharers; anonymous is the heap
    and stacks, this process's own."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                fields[parts[0][:-1]] = int(parts[1]) / 1024
    return fields.get("Rss", 0.0), fields.get("Pss", 0.0), fields.get("Anonymous", 0.0)


class Watcher:
    """One node's event stream, read on a thread: member statuses as it sees
    them, and when each knowledge key was merged."""

    def __init__(self, api):
        self.api = api
        self.lock = threading.Lock()
        self.status = {}
        self.merged, self.dead, self.suspect = {}, {}, {}
        self.verdicts = []  # (node, kind)
        self.full_at = {}
        self.broken = 0  # streams lost or lagging, each followed by a new snapshot
        self.resp = urllib.request.urlopen(f"{api}/v1/events", timeout=DEADLINE)
        self.me = get_retrying(api, "/v1/status")["node"]["id"]
        self.snapshot()
        self.first_alive = self.alive_count()
        threading.Thread(target=self.read, daemon=True).start()

    def snapshot(self):
        """Member statuses as the node lists them now (after a subscription,
        so that no change falls between the two)."""
        nodes = get_retrying(self.api, "/v1/nodes")["nodes"]
        with self.lock:
            for m in nodes:
                self.status[m["id"]] = m["status"]
            alive = sum(1 for s in self.status.values() if s == "alive")
            self.full_at.setdefault(alive, time.monotonic())

    def read(self):
        # A stream that breaks, or that the node reports lagging (it
        # dropped events this slow reader did not take), is followed by a
        # new subscription and a fresh snapshot: the counts stay the node's.
        while True:
            kind = None
            try:
                for raw in self.resp:
                    line = raw.decode().strip()
                    if line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line.startswith("data:") and kind:
                        e = json.loads(line[5:])
                        if kind == "alert" and e.get("kind") == "events_lagged":
                            self.broken += 1
                            self.snapshot()
                        else:
                            self.on(kind, e)
            except Exception:
                pass
            self.broken += 1
            try:
                self.resp = urllib.request.urlopen(f"{self.api}/v1/events", timeout=DEADLINE)
                self.snapshot()
            except Exception:
                return  # the node is gone (killed on purpose, or the run ended)

    def on(self, kind, e):
        # The node stamps each event with its wall clock; on one machine
        # that times the event without this watcher's thread scheduling
        # (100 watcher threads share one interpreter lock).
        now = wall_to_mono(e["at"] / 1000.0) if "at" in e else time.monotonic()
        with self.lock:
            node = e.get("node")
            if kind in ("member_joined", "member_recovered"):
                self.status[node] = "alive"
            elif kind == "member_suspect":
                self.status[node] = "suspect"
                self.suspect.setdefault(node, now)
                self.verdicts.append((node, kind))
            elif kind == "member_dead":
                self.status[node] = "dead"
                self.dead.setdefault(node, now)
                self.verdicts.append((node, kind))
            elif kind in ("member_left", "member_removed"):
                self.status[node] = kind[7:]
            elif kind == "kv_merged":
                self.merged.setdefault(e.get("key"), now)
            alive = sum(1 for s in self.status.values() if s == "alive")
            self.full_at.setdefault(alive, now)

    def alive_count(self):
        with self.lock:
            return sum(1 for s in self.status.values() if s == "alive")

    def known_count(self):
        with self.lock:
            return sum(1 for s in self.status.values() if s in ("alive", "suspect"))

    def all_alive_at(self, n):
        with self.lock:
            if sum(1 for s in self.status.values() if s == "alive") < n:
                return None
            return min((t for k, t in self.full_at.items() if k >= n), default=time.monotonic())

    def false_verdicts(self, really_dead):
        with self.lock:
            return sum(1 for node, _ in self.verdicts if node not in really_dead)


if __name__ == "__main__":
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(SystemExit("over time")))
    signal.alarm(DEADLINE)
    # A `timeout` or Ctrl-C around the script still kills every node it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    main()
