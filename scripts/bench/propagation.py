"""Propagation latency of small edits across a mesh of real nodes.

Started by scripts/bench/propagation (which builds the release binary).
Five nodes on loopback: A creates a project, B..E join it with A's ticket.
Every node's /v1/events stream is watched; each change event carries the
project's clocks (client id -> clock). A then makes EDITS marker edits,
one every INTERVAL seconds; an edit has reached a node once that node's
clocks cover the clocks A reported for it. Latency = from sending the edit
request to the last node applying it. Prints p50/p99/max. Goal: p99 <= 100 ms.
"""

import json
import os
import statistics
import sys
import threading
import time

from meshnodes import Mesh, connect, headers

NODES = 5
EDITS = int(os.environ.get("EDITS", "1000"))
INTERVAL = float(os.environ.get("INTERVAL", "0.02"))
SYNC_TIMEOUT = "120"


class Watcher(threading.Thread):
    """Collects (arrival time, clocks) of one node's change events."""

    def __init__(self, info, project):
        super().__init__(daemon=True)
        self.info, self.project = info, project
        self.events = []
        self.lock = threading.Lock()
        self.ready = threading.Event()

    def run(self):
        conn = connect(self.info)
        conn.request("GET", "/v1/events", headers=headers(self.info))
        resp = conn.getresponse()
        self.ready.set()
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            now = time.perf_counter()
            event = json.loads(line[5:])
            if event.get("project") == self.project and event.get("clocks"):
                with self.lock:
                    self.events.append((now, event["op"], event["clocks"]))

    def snapshot(self):
        with self.lock:
            return list(self.events)


def covers(have, want):
    return all(have.get(k, 0) >= v for k, v in want.items())


def edit(info, project, i):
    conn = connect(info)
    body = json.dumps({"op": "marker_add", "project": project, "at_seconds": i * 0.5, "name": f"m{i}"})
    conn.request("POST", "/v1/request", body=body, headers=headers(info))
    for raw in conn.getresponse():
        line = json.loads(raw)
        if "error" in line:
            raise SystemExit(f"edit {i} failed: {line['error']}")
        if "reply" in line:
            return


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main():
    with Mesh(sys.argv[1], "propagation") as mesh:
        nodes = [mesh.start(chr(ord("a") + i)) for i in range(NODES)]
        dirs = [d for d, _ in nodes]
        project = mesh.share(dirs[0], "Bench", dirs[1:])
        for d in dirs[1:]:
            mesh.cli(d, "sync", project, "--wait", "--timeout", SYNC_TIMEOUT)
        watchers = [Watcher(info, project) for _, info in nodes]
        for w in watchers:
            w.start()
            w.ready.wait(10)
        print(f"{NODES} nodes joined; {EDITS} edits on A, one every {INTERVAL * 1000:.0f} ms ...")
        sent = []
        for i in range(EDITS):
            t0 = time.perf_counter()
            edit(nodes[0][1], project, i)
            sent.append(t0)
            pause = INTERVAL - (time.perf_counter() - t0)
            if pause > 0:
                time.sleep(pause)
        latencies = measure(watchers, sent)
    report(latencies)


def measure(watchers, sent, timeout=30):
    """Waits until every node has every edit; returns each edit's latency."""
    deadline = time.time() + timeout
    while True:
        own = [e for e in watchers[0].snapshot() if e[1] == "marker_add"]
        if len(own) == len(sent):
            wanted = [clocks for _, _, clocks in own]
            arrivals = [arrival_times(w.snapshot(), wanted) for w in watchers[1:]]
            if all(None not in a for a in arrivals):
                return [max(a[i] for a in arrivals) - sent[i] for i in range(len(sent))]
        if time.time() > deadline:
            missing = len(sent) - len(own)
            raise SystemExit(f"not every node got every edit within {timeout} s ({missing} own events missing)")
        time.sleep(0.2)


def arrival_times(events, wanted):
    """For each clocks in `wanted` (in edit order), when `events` (in arrival
    order) first covered it, or None. Both only grow, so one pass suffices."""
    times, j = [], 0
    for clocks in wanted:
        while j < len(events) and not covers(events[j][2], clocks):
            j += 1
        times.append(events[j][0] if j < len(events) else None)
    return times


def report(latencies):
    ms = [x * 1000 for x in latencies]
    p50, p99 = statistics.median(ms), percentile(ms, 99)
    print(f"propagation to all {NODES - 1} peers over {len(ms)} edits: "
          f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(ms):.1f} ms (goal p99 <= 100 ms)")


if __name__ == "__main__":
    main()
