//! Network namespaces the tests make themselves (needs root): each node in
//! its own namespace, joined by veth pairs created directly inside the
//! namespaces, so nothing ever touches the host's interfaces. A namespace
//! without forwarding is a router that routes nothing: A — B — C where A
//! and C cannot reach each other. Namespaces are deleted on drop (also when
//! a test fails), and ones left by a killed test run are swept.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

/// Prefix of every namespace these tests create.
const PREFIX: &str = "mstest";

static NEXT: AtomicUsize = AtomicUsize::new(0);

pub struct Netns {
    pub name: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("iproute2");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn next() -> usize {
    NEXT.fetch_add(1, Ordering::SeqCst)
}

impl Netns {
    pub fn new() -> Netns {
        assert!(
            is_root(),
            "network-namespace tests need root (CI runs as root)"
        );
        sweep_stale();
        let name = format!("{PREFIX}{}x{}", std::process::id(), next());
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    /// Bytes received on `iface` in this namespace, as the kernel counts them.
    pub fn rx_bytes(&self, iface: &str) -> u64 {
        self.rx(iface, "bytes")
    }

    /// Packets received on `iface`.
    pub fn rx_packets(&self, iface: &str) -> u64 {
        self.rx(iface, "packets")
    }

    fn rx(&self, iface: &str, counter: &str) -> u64 {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-s", "-j", "link", "show", "dev", iface])
            .output()
            .expect("iproute2");
        let v: Value = serde_json::from_slice(&out.stdout).expect("ip -j prints JSON");
        v[0]["stats64"]["rx"][counter].as_u64().expect("rx counter")
    }

    /// Runs `tc args...` in this namespace.
    pub fn tc(&self, args: &[&str]) {
        self.exec(&[&["tc"], args].concat());
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A veth pair between `a` and `b` with addresses `a_ip`/`b_ip` (CIDR);
/// returns the interface name (the same on both sides).
pub fn link(a: &Netns, a_ip: &str, b: &Netns, b_ip: &str) -> String {
    let iface = format!("veth{}", next());
    ip(&[
        "-n", &a.name, "link", "add", &iface, "type", "veth", "peer", "name", &iface, "netns",
        &b.name,
    ]);
    for (ns, addr) in [(a, a_ip), (b, b_ip)] {
        ip(&["-n", &ns.name, "addr", "add", addr, "dev", &iface]);
        ip(&["-n", &ns.name, "link", "set", &iface, "up"]);
    }
    iface
}

/// A LAN: a bridge in a namespace of its own, each host joined to it by a
/// veth (`eth0` inside the host) with its address, multicast routed out of
/// it (mDNS). Returns the bridge's namespace.
pub fn lan(hosts: &[(&Netns, &str)]) -> Netns {
    let br = Netns::new();
    ip(&["-n", &br.name, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", &br.name, "link", "set", "br0", "up"]);
    for (i, (host, addr)) in hosts.iter().enumerate() {
        let port = format!("port{i}");
        ip(&[
            "-n", &br.name, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
            &host.name,
        ]);
        ip(&["-n", &br.name, "link", "set", &port, "master", "br0"]);
        ip(&["-n", &br.name, "link", "set", &port, "up"]);
        host.set_address(addr);
        ip(&["-n", &host.name, "link", "set", "eth0", "up"]);
        ip(&[
            "-n",
            &host.name,
            "route",
            "add",
            "224.0.0.0/4",
            "dev",
            "eth0",
        ]);
    }
    br
}

impl Netns {
    /// Gives `eth0` this address (CIDR) instead of any it had: the host moved.
    pub fn set_address(&self, addr: &str) {
        ip(&["-n", &self.name, "addr", "flush", "dev", "eth0"]);
        ip(&["-n", &self.name, "addr", "add", addr, "dev", "eth0"]);
    }
}

/// A site behind NAT: `host` reaches the world only through `router`
/// (whose `eth0` is its public side), which masquerades like a home or
/// school router — nothing outside can open a connection to `host`.
/// `subnet` is the site's private /24 prefix, e.g. `"192.168.50"`.
pub fn behind_nat(router: &Netns, host: &Netns, subnet: &str) {
    let (gateway, inside) = (format!("{subnet}.1"), format!("{subnet}.2/24"));
    link(router, &format!("{gateway}/24"), host, &inside);
    ip(&["-n", &host.name, "route", "add", "default", "via", &gateway]);
    router.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    router.exec(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-o",
        "eth0",
        "-j",
        "MASQUERADE",
    ]);
    // Like a home router's firewall, drop what arrives unasked from the
    // outside. (Dropped, an unasked packet also leaves no connection-tracking
    // entry behind that would make the NAT map the site's next outgoing
    // packet to another port.)
    for chain in ["INPUT", "FORWARD"] {
        let rule = [
            "-A",
            chain,
            "-i",
            "eth0",
            "-m",
            "conntrack",
            "--ctstate",
            "NEW,INVALID",
        ];
        router.exec(&[&["iptables"][..], &rule, &["-j", "DROP"]].concat());
    }
}

impl Netns {
    /// Runs a program in this namespace; panics with its stderr if it fails.
    pub fn exec(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.name];
        all.extend_from_slice(args);
        ip(&all);
    }
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("id");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// Deletes namespaces of earlier test runs whose process is gone.
fn sweep_stale() {
    let out = Command::new("ip").args(["netns", "list"]).output();
    let listing = out.map(|o| o.stdout).unwrap_or_default();
    for line in String::from_utf8_lossy(&listing).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('x').next())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}
