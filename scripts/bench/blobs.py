"""Bulk stem transfer between two nodes on loopback against curl.

Started by scripts/bench/blobs (which builds the release binary). Node A
imports ~SIZE_MB of stems (pink noise at 512 kbit/s); B joins and waits
until every stem is here (`sync --wait`): ours = bytes / that time. In the
same run `python3 -m http.server` serves the very same stem files and curl
downloads them to disk: curl = bytes / its time. And the transport alone:
one iroh QUIC stream of the same size between two processes with the
node's settings and nothing stored (node/examples/quic_ceiling.rs), so
what QUIC costs on this machine and what the node adds show apart. RUNS
(3) rounds of the three, a fresh receiving node each round; prints the
medians and the ratio (goal: ours >= 0.8x curl's throughput).
"""

import glob
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

from meshnodes import Mesh

SIZE_MB = float(os.environ.get("SIZE_MB", "200"))
# Loopback on a shared machine varies by a third from run to run: medians.
RUNS = int(os.environ.get("RUNS", "3"))
FILES = 4
# Pink noise encodes at about the target rate; a little extra makes sure.
BITRATE_KBPS = 512


def make_stems(mesh, a, project):
    seconds = math.ceil(SIZE_MB * 1e6 * 8 / (BITRATE_KBPS * 1000) / FILES * 1.15)
    wavs = []
    for i in range(FILES):
        wav = os.path.join(mesh.work, f"noise{i}.wav")
        subprocess.run(["sox", "-R", "-n", "-r", "48000", "-c", "2", wav, "synth", str(seconds + i), "pinknoise"],
                       check=True)
        wavs.append(wav)
    mesh.cli(a, "config", "set", "stem-bitrate", str(BITRATE_KBPS))
    mesh.cli(a, "import", project, *wavs)
    for wav in wavs:
        os.remove(wav)
    files = glob.glob(os.path.join(a, "blobs", "data", "*.data"))
    return files, sum(os.path.getsize(f) for f in files)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def curl_time(files, out_dir):
    """Seconds curl takes to fetch `files` from python's http.server."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
         "--directory", os.path.dirname(files[0])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        os.makedirs(out_dir)
        t0 = time.perf_counter()
        for f in files:
            name = os.path.basename(f)
            subprocess.run(["curl", "-sf", "-o", os.path.join(out_dir, name), f"http://127.0.0.1:{port}/{name}"],
                           check=True)
        return time.perf_counter() - t0
    finally:
        server.terminate()
        server.wait()


def median(xs):
    return sorted(xs)[len(xs) // 2]


def fetch_time(mesh, name, ticket, project):
    """Seconds a fresh node `name` takes from `join` until every stem is here."""
    b, _ = mesh.start(name)
    t0 = time.perf_counter()
    mesh.cli(b, "join", ticket)
    mesh.cli(b, "sync", project, "--wait", "--timeout", "900")
    took = time.perf_counter() - t0
    # Stopped, so the next receiver fetches from A alone, as this one did.
    mesh.stop(b)
    return took


def ceiling_rate(binary, total):
    out = subprocess.run([binary, str(total)], check=True, capture_output=True, text=True).stdout
    return float(out.split()[0])


def main():
    with Mesh(sys.argv[1], "blobs") as mesh:
        a, _ = mesh.start("a")
        project = mesh.share(a, "Bulk", [])
        files, total = make_stems(mesh, a, project)
        print(f"{len(files)} stems, {total / 1e6:.1f} MB; {RUNS} runs of: a fresh node joins and fetches them, "
              "curl fetches them, one iroh stream carries as many bytes ...")
        ticket = mesh.cli(a, "invite", project).strip().splitlines()[-1]
        ours, curl, transport = [], [], []
        for run in range(RUNS):
            ours.append(total / fetch_time(mesh, f"b{run}", ticket, project) / 1e6)
            fetched = os.path.join(mesh.work, f"curl{run}")
            curl.append(total / curl_time(files, fetched) / 1e6)
            shutil.rmtree(fetched)  # a round leaves no copy behind on disk
            transport.append(ceiling_rate(sys.argv[2], total))
            print(f"  run {run + 1}: meshstudio {ours[-1]:.0f} MB/s, curl {curl[-1]:.0f} MB/s, "
                  f"transport alone {transport[-1]:.0f} MB/s")
    ours_mbs, curl_mbs, transport_mbs = median(ours), median(curl), median(transport)
    print(f"medians: meshstudio {ours_mbs:.0f} MB/s, curl from http.server {curl_mbs:.0f} MB/s: "
          f"{ours_mbs / curl_mbs:.2f}x curl's throughput (goal >= 0.8x)")
    print(f"transport alone (one iroh stream, the node's settings, nothing stored): {transport_mbs:.0f} MB/s = "
          f"{transport_mbs / curl_mbs:.2f}x curl's")


if __name__ == "__main__":
    main()
