//! `meshstudio up`: a long-lived node that owns the data dir, and the CLI
//! going through its API — start/stop, crashes, two nodes, the API's
//! guards, serialised concurrent commands, Ctrl-C of a remote operation.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::studio::{self, Studio};
use crate::support::*;

const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `meshstudio up` on loopback, stopped (Ctrl-C) when dropped.
pub struct Node {
    child: Option<Child>,
    pub data_dir: PathBuf,
    /// The network namespace it runs in (its API is on that loopback).
    netns: Option<String>,
}

impl Node {
    pub fn start(data_dir: &Path) -> Node {
        Node::start_on(data_dir, "127.0.0.1:0")
    }

    /// Starts with the endpoint on `bind` (a fixed port survives restarts,
    /// as a peer that remembers the address needs until discovery exists).
    pub fn start_on(data_dir: &Path, bind: &str) -> Node {
        Node::start_in(data_dir, bind, None)
    }

    /// Starts inside network namespace `netns` (or the test's own).
    pub fn start_in(data_dir: &Path, bind: &str, netns: Option<&str>) -> Node {
        Node::start_with(data_dir, bind, netns, &[])
    }

    /// The same, with more `up` options (`--relay URL`).
    pub fn start_with(data_dir: &Path, bind: &str, netns: Option<&str>, extra: &[&str]) -> Node {
        let child = up_on(data_dir, bind, netns).args(extra).spawn().unwrap();
        let node = Node {
            child: Some(child),
            data_dir: data_dir.to_path_buf(),
            netns: netns.map(str::to_string),
        };
        wait_until(START_TIMEOUT, "the node to answer", || {
            node.info().is_some() && node.answers()
        });
        node
    }

    /// node.json, if present.
    pub fn info(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.data_dir.join("node.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn answers(&self) -> bool {
        meshstudio_in(self.netns.as_deref())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("status")
            .output()
            .unwrap()
            .status
            .success()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Ctrl-C; returns the exit code.
    pub fn stop(mut self) -> Option<i32> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        tool("kill", &["-INT", &child.id().to_string()]);
        let mut status = None;
        wait_until(STOP_TIMEOUT, "the node to stop", || {
            status = child.try_wait().unwrap();
            status.is_some()
        });
        status.unwrap().code()
    }

    /// `kill -9`.
    pub fn crash(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

fn up(data_dir: &Path) -> Command {
    up_on(data_dir, "127.0.0.1:0", None)
}

fn up_on(data_dir: &Path, bind: &str, netns: Option<&str>) -> Command {
    let mut cmd = meshstudio_in(netns);
    cmd.arg("--data-dir")
        .arg(data_dir)
        .args(["up", "--bind", bind, "--api", "127.0.0.1:0"]);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    cmd
}

fn status(dir: &Path) -> std::process::Output {
    meshstudio()
        .arg("--data-dir")
        .arg(dir)
        .args(["status", "--json"])
        .output()
        .unwrap()
}

#[test]
fn start_and_stop_cleanly_again_and_again() {
    let s = Studio::new();
    let id = s.ok(&["id"]).trim().to_string();
    for _ in 0..3 {
        let node = Node::start(s.path());
        let v: Value = serde_json::from_slice(&status(s.path()).stdout).unwrap();
        assert_eq!(v["id"], id.as_str());
        assert_eq!(v["pid"], node.pid());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(s.path().join("node.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(node.stop(), Some(0));
        assert!(
            !s.path().join("node.json").exists(),
            "node.json is removed on exit"
        );
        assert!(!status(s.path()).status.success(), "no node: status fails");
    }
}

#[test]
fn after_kill_9_commands_work_offline_and_a_new_node_starts() {
    let s = Studio::new();
    Node::start(s.path()).crash();
    assert!(
        s.path().join("node.json").exists(),
        "a stale node.json stays behind"
    );
    let err = String::from_utf8_lossy(&status(s.path()).stderr).into_owned();
    assert!(err.contains("no node is running"), "{err}");
    s.ok(&["project", "new", "Offline"]);
    let node = Node::start(s.path());
    assert_eq!(s.show("Offline")["name"], "Offline");
    assert_eq!(node.stop(), Some(0));
}

#[test]
fn a_second_node_on_one_data_dir_names_the_first() {
    let s = Studio::new();
    let node = Node::start(s.path());
    let out = up(s.path()).stderr(Stdio::piped()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("already running") && err.contains(&node.pid().to_string()),
        "{err}"
    );
}

#[test]
fn two_nodes_run_side_by_side() {
    let (a, b) = (Studio::new(), Studio::new());
    let (_na, _nb) = (Node::start(a.path()), Node::start(b.path()));
    let va: Value = serde_json::from_slice(&status(a.path()).stdout).unwrap();
    let vb: Value = serde_json::from_slice(&status(b.path()).stdout).unwrap();
    assert_ne!(va["id"], vb["id"]);
    assert_ne!(va["api"], vb["api"]);
}

/// Sends a raw HTTP/1.1 GET, so the test controls every header.
fn send_get(api: &str, path: &str, host: &str, token: Option<&str>) -> std::net::TcpStream {
    let mut stream = std::net::TcpStream::connect(api).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    stream
}

/// A raw GET's status code.
fn http_get(api: &str, path: &str, host: &str, token: Option<&str>) -> u16 {
    let mut stream = send_get(api, path, host, token);
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_node_with_a_watcher_on_its_event_stream_still_stops() {
    // The event stream never ends by itself; the API server waits for open
    // responses on shutdown, so the node must end the stream when stopping.
    let s = Studio::new();
    let node = Node::start(s.path());
    let info = node.info().unwrap();
    let api = info["api"].as_str().unwrap();
    let mut watcher = send_get(api, "/v1/events", api, info["token"].as_str());
    let mut head = [0u8; 12];
    watcher.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    assert_eq!(node.stop(), Some(0), "Ctrl-C is a clean stop");
    let mut rest = Vec::new();
    watcher.read_to_end(&mut rest).unwrap();
}

#[test]
fn the_api_wants_the_token_and_a_local_host() {
    let s = Studio::new();
    let node = Node::start(s.path());
    let info = node.info().unwrap();
    let (api, token) = (
        info["api"].as_str().unwrap(),
        info["token"].as_str().unwrap(),
    );
    assert_eq!(http_get(api, "/v1/status", api, Some(token)), 200);
    assert_eq!(http_get(api, "/v1/status", "localhost", Some(token)), 200);
    assert_eq!(http_get(api, "/v1/status", api, None), 401);
    assert_eq!(http_get(api, "/v1/status", api, Some("0000")), 401);
    assert_eq!(
        http_get(api, "/v1/status", "evil.example:7878", Some(token)),
        403
    );
    assert_eq!(
        http_get(api, "/v1/status", "127.0.0.1.evil.example", Some(token)),
        403
    );
}

#[test]
fn the_offline_suite_gives_the_same_results_through_a_node() {
    studio::build_a_song_offline_with(&Studio::with_node());
    studio::names_resolve_by_id_prefix_or_unique_name_with(&Studio::with_node());
    studio::undo_and_redo_work_across_processes_with(&Studio::with_node());
}

#[test]
fn concurrent_commands_through_a_node_lose_no_edit() {
    let s = Studio::with_node();
    s.ok(&["project", "new", "Busy"]);
    const WRITERS: usize = 8;
    let children: Vec<Child> = (0..WRITERS)
        .map(|i| {
            meshstudio()
                .arg("--data-dir")
                .arg(s.path())
                .args(["track", "add", "Busy", &format!("T{i}")])
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let tracks = s.show("Busy")["tracks"].as_array().unwrap().len();
    assert_eq!(tracks, WRITERS);
}

#[test]
fn ctrl_c_on_the_cli_cancels_the_nodes_work() {
    let s = Studio::with_node();
    s.ok(&["project", "new", "P"]);
    let before = s.show("P");
    let long = s.path().join("long.wav");
    long_noise(&long, 300);
    let mut cli = meshstudio()
        .arg("--data-dir")
        .arg(s.path())
        .args(["import", "P", s_(&long)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let scratch = s.path().join("tmp");
    wait_until(START_TIMEOUT, "the node to start encoding", || {
        scratch.exists() && !listing(&scratch).is_empty()
    });
    tool("kill", &["-INT", &cli.id().to_string()]);
    let mut code = None;
    wait_until(STOP_TIMEOUT, "the CLI to stop", || {
        code = cli.try_wait().unwrap().map(|s| s.code());
        code.is_some()
    });
    assert_eq!(code.unwrap(), Some(130));
    wait_until(STOP_TIMEOUT, "the node to drop the scratch file", || {
        listing(&scratch).is_empty()
    });
    assert_eq!(s.show("P"), before, "nothing was imported");
    assert!(s.run(&["status"]).status.success(), "the node is still up");
}

fn s_(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn changes_are_announced_on_the_event_stream() {
    let s = Studio::with_node();
    let info = s.node.as_ref().unwrap().info().unwrap();
    let (api, token) = (
        info["api"].as_str().unwrap(),
        info["token"].as_str().unwrap(),
    );
    let mut stream = std::net::TcpStream::connect(api).unwrap();
    write!(
        stream,
        "GET /v1/events HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut seen = String::new();
    let mut read_some = |seen: &mut String| {
        let mut buf = [0u8; 4096];
        if let Ok(n) = stream.read(&mut buf) {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    };
    wait_until(STOP_TIMEOUT, "the event stream to open", || {
        read_some(&mut seen);
        seen.contains("200 OK")
    });
    let id = s.json(&["project", "new", "Announced"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_until(STOP_TIMEOUT, "the change event", || {
        read_some(&mut seen);
        seen.contains("event: change") && seen.contains(&id)
    });
    assert!(seen.contains("project_new"), "{seen}");
}

#[test]
fn a_taken_api_port_falls_back_to_a_free_one_and_says_so() {
    // Hold the default port (if something else already holds it, even better).
    let _holder = std::net::TcpListener::bind("127.0.0.1:7878");
    let s = Studio::new();
    let mut child = meshstudio()
        .arg("--data-dir")
        .arg(s.path())
        .args(["up", "--bind", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let node = Node {
        child: None,
        data_dir: s.path().to_path_buf(),
        netns: None,
    };
    wait_until(START_TIMEOUT, "the node to answer", || {
        node.info().is_some() && node.answers()
    });
    let api = node.info().unwrap()["api"].as_str().unwrap().to_string();
    assert_ne!(api, "127.0.0.1:7878");
    tool("kill", &["-INT", &child.id().to_string()]);
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert!(out.contains("7878 is taken"), "{out}");
    assert!(out.contains(&api), "prints the API address: {out}");
}
