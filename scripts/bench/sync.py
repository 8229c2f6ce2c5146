"""Stem sync over slow, lossy links against TCP on the same link.

Started by scripts/bench/sync (which builds the release binary). Two
network namespaces joined by scripts/linkemu, one profile at a time:

  A: 10 Mbit/s, 150 ms RTT, 1 % loss, 20 MB of stems
  B:  1 Mbit/s, 300 ms RTT, 3 % loss,  2 MB of stems

Node A (in namespace a) holds the stems; a fresh node B (namespace b)
joins and waits until every stem is here (`sync --wait`): ours = that
time, once per QUIC congestion controller (MESHSTUDIO_CONGESTION on the
sending node). In the same run, on the same link, curl in b fetches the
same bytes (one file) from `python3 -m http.server` in a, with a's TCP
congestion control set to cubic, then bbr. RUNS runs each (default 3),
median. Ideal = bytes × 8 / link rate. Goal: ours ≤ 1.10 × ideal.
"""

import glob
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
LINKEMU = os.path.join(HERE, "..", "linkemu")
RUNS = int(os.environ.get("RUNS", "3"))
PROFILES = [
    dict(name="A", kbit=10_000, delay_ms=75, loss=0.01, mb=20),
    dict(name="B", kbit=1_000, delay_ms=150, loss=0.03, mb=2),
]
CONTROLLERS = os.environ.get("CONTROLLERS", "bbr bbr3 cubic").split()
# TCP congestion controls curl runs with (TCP="" skips curl while tuning).
TCP = os.environ.get("TCP", "cubic bbr").split()
BITRATE_KBPS = 512
A_IP, B_IP = "10.98.0.1", "10.98.0.2"
NODE_PORT = 7000
HTTP_PORT = 8080
START_TIMEOUT = 30
# TIMELINE=1: after each profile, how busy the link was (a→b) every
# TIMELINE_SLICE seconds (default 0.5, at least the emulator's 0.1) of
# each of our runs — where a run loses time.
TIMELINE = bool(os.environ.get("TIMELINE"))
TIMELINE_SLICE = max(0.1, float(os.environ.get("TIMELINE_SLICE", "0.5")))
# (start, end) monotonic times of our runs in this profile, for TIMELINE.
RUN_SPANS = []


def run(*args, ns=None, env=None, check=True, capture=False):
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    return subprocess.run(cmd, check=check, env=env, capture_output=capture, text=True)


class Site:
    """A namespace and, in it, at most one meshstudio node."""

    def __init__(self, binary, work, name):
        self.binary, self.name = binary, f"msbench{os.getpid()}{name}"
        self.work = work
        self.proc = None
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        run("ip", "link", "set", "lo", "up", ns=self.name)

    def start(self, data_dir, congestion):
        env = dict(os.environ, MESHSTUDIO_CONGESTION=congestion)
        os.makedirs(data_dir, exist_ok=True)
        log = open(os.path.join(data_dir, "up.log"), "a")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.name, self.binary, "--data-dir", data_dir, "up",
             "--bind", f"0.0.0.0:{NODE_PORT}", "--api", "127.0.0.1:0", "--no-discovery"],
            stdout=log, stderr=subprocess.STDOUT, env=env)
        info = os.path.join(data_dir, "node.json")
        deadline = time.time() + START_TIMEOUT
        while not os.path.exists(info):
            if time.time() > deadline:
                raise SystemExit(f"the node in {data_dir} did not start")
            time.sleep(0.05)
        time.sleep(0.2)  # node.json is written just before the API answers

    def stop(self):
        if self.proc:
            self.proc.send_signal(2)
            self.proc.wait(30)
            self.proc = None

    def cli(self, data_dir, *args):
        out = run(self.binary, "--data-dir", data_dir, *args, ns=self.name, capture=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"meshstudio {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def close(self):
        self.stop()
        subprocess.run(["ip", "netns", "del", self.name])


def make_stems(site, data_dir, mb):
    """Imports ~mb MB of pink-noise stems into a new project; returns (project, stem files, bytes)."""
    project = json.loads(site.cli(data_dir, "project", "new", "Bench", "--json"))["id"]
    site.cli(data_dir, "config", "set", "stem-bitrate", str(BITRATE_KBPS))
    seconds = math.ceil(mb * 1e6 * 8 / (BITRATE_KBPS * 1000) / 2 * 1.1)
    wavs = []
    for i in range(2):
        wav = os.path.join(site.work, f"noise{i}.wav")
        subprocess.run(["sox", "-R", "-n", "-r", "48000", "-c", "2", wav, "synth", str(seconds + i),
                        "pinknoise"], check=True)
        wavs.append(wav)
    site.cli(data_dir, "import", project, *wavs)
    for w in wavs:
        os.remove(w)
    files = glob.glob(os.path.join(data_dir, "blobs", "data", "*.data"))
    return project, files, sum(os.path.getsize(f) for f in files)


def ours(a, b, a_pristine, project, congestion):
    """Seconds from B's join until every stem is on B. A starts each run
    from its data as imported: a node that remembers the joiners of earlier
    runs keeps dialing them, at the address the new joiner has, through
    the same link."""
    run_id = f"{congestion}-{time.monotonic_ns()}"
    a_dir = os.path.join(a.work, f"a-{run_id}")
    # Not the last run's node.json: start() waits for a new one.
    shutil.copytree(a_pristine, a_dir, ignore=shutil.ignore_patterns("node.json", "up.log", "logs"))
    a.start(a_dir, congestion)
    b_dir = os.path.join(b.work, f"b-{run_id}")
    b.start(b_dir, congestion)
    try:
        ticket = a.cli(a_dir, "invite", project).strip().splitlines()[-1]
        started = time.monotonic()
        b.cli(b_dir, "join", ticket)
        joined = time.monotonic() - started
        b.cli(b_dir, "sync", project, "--wait", "--timeout", "1800")
        took = time.monotonic() - started
        RUN_SPANS.append((started, started + took))
        if os.environ.get("VERBOSE"):
            print(f"    join {joined:.1f} s, then stems {took - joined:.1f} s", flush=True)
        return took
    finally:
        b.stop()
        a.stop()
        if not os.environ.get("KEEP"):
            shutil.rmtree(b_dir, ignore_errors=True)
            shutil.rmtree(a_dir, ignore_errors=True)


# python's http.server whose listening socket (and so every connection it
# accepts) uses the TCP congestion control in argv[1]: a namespace's sysctl
# cannot be changed in this container, a socket's can.
HTTP_SERVER = """
import functools, http.server, socket, sys
class Server(http.server.ThreadingHTTPServer):
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, sys.argv[1].encode())
        super().server_bind()
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[4])
Server((sys.argv[2], int(sys.argv[3])), handler).serve_forever()
"""


def curl(a, b, blob, tcp_cc):
    """Seconds curl in b needs for `blob` served over TCP `tcp_cc` from a."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", a.name, sys.executable, "-c", HTTP_SERVER, tcp_cc, A_IP,
         str(HTTP_PORT), os.path.dirname(blob)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://{A_IP}:{HTTP_PORT}/{os.path.basename(blob)}"
        deadline = time.time() + 30
        while run("curl", "-sfI", url, ns=b.name, check=False, capture=True).returncode != 0:
            if time.time() > deadline:
                raise SystemExit("http.server did not start")
            time.sleep(0.2)
        out = run("curl", "-sf", "-o", "/dev/null", "-w", "%{time_total}", url, ns=b.name, capture=True)
        return float(out.stdout)
    finally:
        server.kill()
        server.wait()


def profile(binary, work, p):
    # Each profile its own data dirs: the stems counted are this profile's.
    work = os.path.join(work, p["name"])
    os.makedirs(work)
    timeline = os.path.join(work, "timeline.json")
    RUN_SPANS.clear()
    a, b = Site(binary, work, "a"), Site(binary, work, "b")
    emu = subprocess.Popen(
        [sys.executable, LINKEMU, "--ns", a.name, "--ns", b.name, "--addr", f"{A_IP}/24",
         "--addr", f"{B_IP}/24", "--rate-kbit", str(p["kbit"]), "--delay-ms", str(p["delay_ms"]),
         "--loss", str(p["loss"]), "--queue-ms", str(max(100, 2 * p["delay_ms"]))]
        + (["--timeline", timeline] if TIMELINE else []),
        stdout=subprocess.PIPE, text=True)
    try:
        assert emu.stdout.readline().strip() == "ready"
        a_dir = os.path.join(work, "a")
        a.start(a_dir, CONTROLLERS[0])
        project, files, total = make_stems(a, a_dir, p["mb"])
        blob = os.path.join(work, "http", "stems.bin")
        os.makedirs(os.path.dirname(blob), exist_ok=True)
        with open(blob, "wb") as out:
            for f in files:
                with open(f, "rb") as src:
                    shutil.copyfileobj(src, out)
        a.stop()
        ideal = total * 8 / (p["kbit"] * 1000)
        print(f"\nprofile {p['name']}: {p['kbit'] / 1000:g} Mbit/s, {2 * p['delay_ms']} ms RTT, "
              f"{p['loss'] * 100:g} % loss; {total} B; ideal {ideal:.1f} s", flush=True)
        for cc in CONTROLLERS:
            report(f"ours ({cc})", ideal, [ours(a, b, a_dir, project, cc) for _ in range(RUNS)])
        for cc in TCP:
            report(f"curl tcp {cc}", ideal, [curl(a, b, blob, cc) for _ in range(RUNS)])
    finally:
        emu.terminate()
        emu.wait()
        a.close()
        b.close()
    if TIMELINE:
        print_timeline(timeline, p["kbit"])


def print_timeline(path, kbit):
    """Per run: the link's use a→b in % of its rate, every TIMELINE_SLICE s."""
    with open(path) as f:
        t = json.load(f)
    per_slice = round(TIMELINE_SLICE / t["step_s"])
    capacity = kbit * 1000 / 8 * TIMELINE_SLICE
    for n, (start, end) in enumerate(RUN_SPANS):
        first = int((start - t["start_s"]) / t["step_s"])
        last = int((end - t["start_s"]) / t["step_s"]) + 1
        steps = t["a_to_b"][max(first, 0):last]
        slices = [sum(steps[i:i + per_slice]) for i in range(0, len(steps), per_slice)]
        print(f"  run {n + 1}, link use a→b every {TIMELINE_SLICE:g} s (%):", flush=True)
        print("   " + " ".join(f"{100 * b / capacity:.0f}" for b in slices), flush=True)


def report(name, ideal, times):
    med = statistics.median(times)
    runs = ", ".join(f"{t:.2f}" for t in times)
    # Three decimals: the goal is 1.10x, and 1.104x must not print as 1.10x.
    print(f"  {name:<16} median {med:7.2f} s = {med / ideal:6.3f}x ideal   (runs: {runs})", flush=True)


def main():
    binary = sys.argv[1]
    work = "/var/tmp/meshstudio-bench-sync"
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    for p in PROFILES:
        if os.environ.get("PROFILE", p["name"]) == p["name"]:
            profile(binary, work, p)
    if not os.environ.get("KEEP"):  # KEEP=1 leaves the nodes' logs for a look
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
