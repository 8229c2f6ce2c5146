"""Real meshstudio nodes for the benchmarks: start `meshstudio up` on a
fresh data dir on loopback, run CLI commands against it, talk to its API,
and stop every node (Ctrl-C) at the end."""

import http.client
import json
import os
import subprocess
import tempfile
import time

START_TIMEOUT = 30


class Mesh:
    """A work dir under /var/tmp with nodes named a, b, ...; a context manager."""

    def __init__(self, binary, prefix):
        self.binary = binary
        self.work = tempfile.mkdtemp(prefix=f"meshstudio-{prefix}.", dir="/var/tmp")
        self.procs = []
        self.by_dir = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.send_signal(2)
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(["rm", "-rf", self.work])

    def start(self, name):
        """Starts a node on data dir `name`; returns (dir, node.json)."""
        data_dir = os.path.join(self.work, name)
        os.makedirs(data_dir)
        log = open(os.path.join(data_dir, "up.log"), "w")
        proc = subprocess.Popen(
            [self.binary, "--data-dir", data_dir, "up", "--bind", "127.0.0.1:0", "--api", "127.0.0.1:0"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        self.by_dir[data_dir] = proc
        info = os.path.join(data_dir, "node.json")
        deadline = time.time() + START_TIMEOUT
        while time.time() < deadline:
            if os.path.exists(info):
                try:
                    with open(info) as f:
                        return data_dir, json.load(f)
                except ValueError:
                    pass
            time.sleep(0.05)
        raise SystemExit(f"node in {data_dir} did not start")

    def stop(self, data_dir):
        """Stops (Ctrl-C) the node started on `data_dir`."""
        p = self.by_dir[data_dir]
        if p.poll() is None:
            p.send_signal(2)
            p.wait(20)

    def cli(self, data_dir, *args):
        out = subprocess.run(
            [self.binary, "--data-dir", data_dir, *args],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            raise SystemExit(f"meshstudio {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def share(self, owner, name, members):
        """A new project on `owner`, joined by every data dir in `members`."""
        project = json.loads(self.cli(owner, "project", "new", name, "--json"))["id"]
        ticket = self.cli(owner, "invite", project).strip().splitlines()[-1]
        for d in members:
            self.cli(d, "join", ticket)
        return project


def connect(info):
    host, port = info["api"].rsplit(":", 1)
    return http.client.HTTPConnection(host, int(port), timeout=60)


def headers(info):
    return {"Authorization": f"Bearer {info['token']}", "Content-Type": "application/json"}
