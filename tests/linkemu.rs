//! The userspace link emulator (`scripts/linkemu`) between two namespaces
//! the test creates: delay, loss, outages and the rate limit, measured
//! with UDP echoes and an HTTP download from outside the emulator.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::netns::Netns;
use crate::support::*;

const A_ADDR: &str = "10.99.0.1/24";
const B_IP: &str = "10.99.0.2";

/// A running emulator between two fresh namespaces; stopped on drop.
pub struct LinkEmu {
    pub a: Netns,
    pub b: Netns,
    child: Child,
}

impl LinkEmu {
    /// Starts `scripts/linkemu` with `args` (rate, delay, loss, outage …).
    pub fn start(args: &[&str]) -> LinkEmu {
        let (a, b) = (Netns::new(), Netns::new());
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/linkemu");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--ns", &a.name, "--ns", &b.name, "--addr", A_ADDR])
            .args(["--addr", &format!("{B_IP}/24")])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 runs scripts/linkemu");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped");
        BufReader::new(stdout).read_line(&mut line).expect("reads");
        assert_eq!(line.trim(), "ready", "linkemu did not start");
        LinkEmu { a, b, child }
    }
}

impl LinkEmu {
    /// Stops the emulator; returns its counters per direction (`a_to_b`, `b_to_a`).
    pub fn stop(mut self) -> serde_json::Value {
        self.terminate();
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            std::io::Read::read_to_string(&mut e, &mut err).unwrap();
        }
        let last = err.lines().last().unwrap_or_default();
        serde_json::from_str(last).unwrap_or_else(|_| panic!("linkemu counters: {err}"))
    }

    /// SIGTERM (the emulator then prints its counters), once.
    fn terminate(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let pid = self.child.id().to_string();
            let _ = Command::new("kill").arg(pid).status();
        }
        let _ = self.child.wait();
    }
}

impl Drop for LinkEmu {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Sends `count` UDP echoes from A to B, `gap` apart; returns each one's
/// round trip in ms (`None`: lost), measured by a client in A.
fn echoes(link: &LinkEmu, count: usize, gap: Duration) -> Vec<Option<f64>> {
    let server = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 9999))
while True:
    d, a = s.recvfrom(2048)
    s.sendto(d, a)
"#;
    let mut echo = Command::new("ip")
        .args(["netns", "exec", &link.b.name, "python3", "-c", server])
        .spawn()
        .unwrap();
    let client = format!(
        r#"
import json, socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.005)
sent, back = {{}}, {{}}
for i in range({count} + 40):  # 40 more gaps to hear the last ones come back
    if i < {count}:
        sent[i] = time.monotonic()
        s.sendto(str(i).encode(), ("{B_IP}", 9999))
    end = time.monotonic() + {gap}
    while time.monotonic() < end:
        try:
            d, _ = s.recvfrom(2048)
            k = int(d)
            back[k] = (time.monotonic() - sent[k]) * 1000
        except socket.timeout:
            pass
print(json.dumps([back.get(i) for i in range({count})]))
"#,
        gap = gap.as_secs_f64()
    );
    // The server needs a moment to bind: the client's first echoes would be lost.
    wait_until(Duration::from_secs(5), "the echo server", || {
        let out = Command::new("ip")
            .args(["netns", "exec", &link.b.name, "ss", "-uln"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains(":9999")
    });
    let out = Command::new("ip")
        .args(["netns", "exec", &link.a.name, "python3", "-c", &client])
        .output()
        .unwrap();
    let _ = echo.kill();
    let _ = echo.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn delay_jitter_and_loss_apply_each_way() {
    let link = LinkEmu::start(&["--delay-ms", "40", "--jitter-ms", "4", "--loss", "0.1"]);
    let rtts = echoes(&link, 100, Duration::from_millis(20));
    let got: Vec<f64> = rtts.iter().flatten().copied().collect();
    // Each echo crosses twice: P(arrives) = 0.9² = 0.81.
    assert!(
        (65..=95).contains(&got.len()),
        "{} of 100 came back",
        got.len()
    );
    assert!(got.iter().all(|r| (72.0..=110.0).contains(r)), "{got:?}");
    let mut sorted = got.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    assert!(
        (78.0..=90.0).contains(&median),
        "median round trip {median} ms"
    );
}

#[test]
fn an_outage_drops_everything_while_down() {
    // Down for the last 0.5 s of every 1.5 s.
    let link = LinkEmu::start(&["--outage", "0.5/1.5"]);
    let rtts = echoes(&link, 150, Duration::from_millis(20));
    let lost = rtts.iter().filter(|r| r.is_none()).count();
    assert!(
        (35..=65).contains(&lost),
        "{lost} of 150 lost (a third expected)"
    );
    // Losses come in runs (the outages), not scattered.
    let runs = rtts
        .windows(2)
        .filter(|w| w[0].is_some() && w[1].is_none())
        .count();
    assert!(runs <= 4, "{runs} separate runs of losses");
}

#[test]
fn the_rate_limit_holds_for_tcp() {
    let link = LinkEmu::start(&["--rate-kbit", "2000", "--delay-ms", "10"]);
    let dir = tempdir();
    std::fs::write(dir.path().join("f.bin"), vec![7u8; 1_000_000]).unwrap();
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &link.b.name,
            "python3",
            "-m",
            "http.server",
            "8080",
        ])
        .args(["--bind", B_IP, "--directory", s(dir.path())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://{B_IP}:8080/f.bin");
    let started = Instant::now();
    let mut fetched = false;
    wait_until(Duration::from_secs(30), "the download", || {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &link.a.name,
                "curl",
                "-sf",
                "-o",
                "/dev/null",
                &url,
            ])
            .status()
            .unwrap();
        fetched = out.success();
        fetched
    });
    let took = started.elapsed();
    let _ = server.kill();
    let _ = server.wait();
    // 1 MB at 2 Mbit/s takes 4 s on the wire: never less.
    assert!(took >= Duration::from_secs(4), "{took:?}");
}
