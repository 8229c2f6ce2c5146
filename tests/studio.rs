//! The offline studio from the command line: identity, projects, tracks,
//! imports, stories, lyrics — against a real data dir (redb + blob store).

use std::path::Path;
use std::process::Output;

use serde_json::Value;

use crate::support::*;

/// A data dir and the `meshstudio --data-dir` that uses it.
pub struct Studio {
    pub dir: tempfile::TempDir,
    /// A running `meshstudio up` for this data dir, when the commands go through it.
    pub node: Option<crate::node::Node>,
    /// The network namespace the node and the commands run in, if not the test's.
    pub netns: Option<String>,
    /// Extra environment for every command (an audio test's own sink).
    pub env: Vec<(String, String)>,
}

impl Studio {
    /// A fresh, initialised data dir; commands run in-process.
    pub fn new() -> Self {
        let studio = Studio {
            dir: tempdir(),
            node: None,
            netns: None,
            env: Vec::new(),
        };
        studio.ok(&["init", "--site", "Test Site"]);
        studio
    }

    /// The same, with a node running: every command goes through its API.
    pub fn with_node() -> Self {
        let mut studio = Studio::new();
        studio.node = Some(crate::node::Node::start(studio.path()));
        studio
    }

    /// The same, with more `up` options.
    pub fn with_node_using(extra: &[&str]) -> Self {
        let mut studio = Studio::new();
        let node = crate::node::Node::start_with(studio.path(), "127.0.0.1:0", None, extra);
        studio.node = Some(node);
        studio
    }

    /// The same, in network namespace `ns`, the node's endpoint on `bind`.
    pub fn with_node_in(ns: &crate::netns::Netns, bind: &str) -> Self {
        let mut studio = Studio::new();
        studio.netns = Some(ns.name.clone());
        studio.start_node(bind);
        studio
    }

    /// The same, with more `up` options.
    pub fn with_node_in_using(ns: &crate::netns::Netns, bind: &str, extra: &[&str]) -> Self {
        let mut studio = Studio::new();
        studio.netns = Some(ns.name.clone());
        let node = crate::node::Node::start_with(studio.path(), bind, Some(&ns.name), extra);
        studio.node = Some(node);
        studio
    }

    /// (Re)starts this studio's node with its endpoint on `bind`.
    pub fn start_node(&mut self, bind: &str) {
        let node = crate::node::Node::start_in(self.path(), bind, self.netns.as_deref());
        self.node = Some(node);
    }

    /// `meshstudio --data-dir <this> args...`, not started.
    pub fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = meshstudio_in(self.netns.as_deref());
        cmd.arg("--data-dir")
            .arg(self.dir.path())
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut with_json = args.to_vec();
        with_json.push("--json");
        serde_json::from_str(&self.ok(&with_json)).unwrap()
    }

    /// Runs a command that must fail; returns its one stderr line.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{args:?} should fail");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line:\n{stderr}");
        stderr
    }

    pub fn show(&self, project: &str) -> Value {
        self.json(&["project", "show", project])
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

#[test]
fn init_is_idempotent_and_the_id_stays() {
    let s = Studio::new();
    let id = s.ok(&["id"]).trim().to_string();
    assert_eq!(id.len(), 64, "hex ed25519 public key: {id}");
    let again = s.json(&["init"]);
    assert_eq!(again["id"], id.as_str());
    assert_eq!(again["created"], false);
    assert_eq!(again["site"], "Test Site");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(s.path().join("node.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn commands_before_init_say_what_to_do() {
    let dir = tempdir();
    let out = meshstudio()
        .arg("--data-dir")
        .arg(dir.path())
        .args(["project", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("meshstudio init"));
}

#[test]
fn the_stem_bitrate_setting_applies_to_imports() {
    let s = Studio::new();
    s.ok(&["project", "new", "Rates"]);
    let noise = format!("{ALSA_SOUNDS}/Noise.wav");
    let first = s.json(&["import", "Rates", &noise]);
    assert_eq!(first["imported"][0]["bitrate_kbps"], 96, "mono default");
    s.ok(&["config", "set", "stem-bitrate", "64"]);
    let second = s.json(&["import", "Rates", &noise]);
    assert_eq!(second["imported"][0]["bitrate_kbps"], 64);
    assert_ne!(first["imported"][0]["blob"], second["imported"][0]["blob"]);
    let err = s.fails(&["config", "set", "stem-bitrate", "9000"]);
    assert!(
        err.contains("stem-bitrate") && err.contains("32..=512"),
        "{err}"
    );
    s.fails(&["config", "set", "stem-bitrate", "fast"]);
    // A refused value leaves the last good one.
    let third = s.json(&["import", "Rates", &noise]);
    assert_eq!(third["imported"][0]["bitrate_kbps"], 64);
}

#[test]
fn build_a_song_offline() {
    build_a_song_offline_with(&Studio::new());
}

pub fn build_a_song_offline_with(s: &Studio) {
    s.ok(&["config", "set", "author", "Lina"]);
    let p = s.json(&["project", "new", "Rain Song"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.ok(&["track", "add", "Rain Song", "Vocals"]);
    let center = format!("{ALSA_SOUNDS}/Front_Center.wav");
    let bell = format!("{FREEDESKTOP_SOUNDS}/bell.oga");
    s.ok(&["import", "Rain Song", &center, &bell]);
    s.ok(&[
        "import",
        &p[..8],
        &format!("{ALSA_SOUNDS}/Noise.wav"),
        "--track",
        "Vocals",
        "--at",
        "2.5",
    ]);
    s.ok(&[
        "track",
        "set",
        "Rain Song",
        "Vocals",
        "--gain",
        "-6",
        "--pan",
        "-0.5",
        "--mute",
    ]);
    s.ok(&["story", "add", "Rain Song", "We recorded this in the rain"]);
    let lyrics = s.path().join("lyrics.txt");
    std::fs::write(&lyrics, "la la 🎵 land\n").unwrap();
    s.ok(&["lyrics", "Rain Song", "--set", lyrics.to_str().unwrap()]);

    let v = s.show(&p);
    assert_eq!(v["name"], "Rain Song");
    let tracks = v["tracks"].as_array().unwrap();
    let names: Vec<_> = tracks.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Vocals", "Front_Center", "bell"], "sorted by order");
    let vocals = &tracks[0];
    assert_eq!(
        (vocals["gain_db"].as_f64(), vocals["pan"].as_f64()),
        (Some(-6.0), Some(-0.5))
    );
    assert_eq!(vocals["mute"], true);
    let clip = &vocals["clips"][0];
    assert_eq!(clip["start"], 120_000, "--at 2.5 s at 48 kHz");
    assert_eq!(
        clip["length"].as_u64().unwrap() as usize,
        read_wav(Path::new(&format!("{ALSA_SOUNDS}/Noise.wav"))).frames()
    );
    assert_eq!(tracks[1]["clips"][0]["length"], 68_545);
    assert_eq!(v["stories"][0]["author"], "Lina");
    assert_eq!(v["stories"][0]["site"], "Test Site");
    assert_eq!(v["lyrics"], "la la 🎵 land\n");
    // The same state after a fresh process reads it back.
    assert_eq!(s.show("Rain Song"), v);
}

#[test]
fn negative_numbers_are_values_not_flags() {
    let s = Studio::new();
    s.ok(&["project", "new", "P"]);
    s.ok(&["track", "add", "P", "Bass"]);
    s.ok(&["track", "set", "P", "Bass", "--gain", "-12.5"]);
    s.ok(&["track", "set", "P", "Bass", "--pan", "-1"]);
    let t = &s.show("P")["tracks"][0];
    assert_eq!(
        (t["gain_db"].as_f64(), t["pan"].as_f64()),
        (Some(-12.5), Some(-1.0))
    );
    assert!(
        s.fails(&["track", "set", "P", "Bass", "--pan", "-1.5"])
            .contains("pan")
    );
}

#[test]
fn names_resolve_by_id_prefix_or_unique_name() {
    names_resolve_by_id_prefix_or_unique_name_with(&Studio::new());
}

pub fn names_resolve_by_id_prefix_or_unique_name_with(s: &Studio) {
    let a = s.json(&["project", "new", "Twin"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let b = s.json(&["project", "new", "Twin"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let err = s.fails(&["project", "show", "Twin"]);
    assert!(
        err.contains(&a) && err.contains(&b),
        "lists the candidates: {err}"
    );
    assert_eq!(s.show(&a[..6])["id"], a.as_str());
    assert!(
        s.fails(&["project", "show", "Nope"])
            .contains("no project named")
    );
    s.ok(&["track", "add", &a, "Keys"]);
    assert!(
        s.fails(&["track", "rm", &a, "Drums"])
            .contains("no track named")
    );
    s.ok(&["track", "rm", &a, "Keys"]);
    assert!(s.show(&a)["tracks"].as_array().unwrap().is_empty());
}

#[test]
fn a_bad_import_changes_nothing() {
    let s = Studio::new();
    s.ok(&["project", "new", "P"]);
    let before = s.show("P");
    let junk = s.path().join("junk.wav");
    std::fs::write(&junk, b"definitely not audio").unwrap();
    let err = s.fails(&["import", "P", junk.to_str().unwrap()]);
    assert!(
        err.contains("junk.wav") && err.contains("not an audio file"),
        "{err}"
    );
    assert_eq!(s.show("P"), before);
    let scratch = s.path().join("tmp");
    assert!(
        !scratch.exists() || listing(&scratch).is_empty(),
        "no scratch files left"
    );
}

#[test]
fn undo_and_redo_work_across_processes() {
    undo_and_redo_work_across_processes_with(&Studio::new());
}

pub fn undo_and_redo_work_across_processes_with(s: &Studio) {
    s.ok(&["project", "new", "P"]);
    s.ok(&["import", "P", &format!("{ALSA_SOUNDS}/Front_Left.wav")]);
    s.ok(&["track", "set", "P", "Front_Left", "--gain", "-6"]);
    s.ok(&["clip", "move", "P", "Front_Left.wav", "--to", "2"]);
    let moved = s.show("P");
    assert_eq!(moved["tracks"][0]["clips"][0]["start"], 96_000);
    s.ok(&["undo", "P"]);
    assert_eq!(s.show("P")["tracks"][0]["clips"][0]["start"], 0);
    s.ok(&["undo", "P"]);
    assert_eq!(s.show("P")["tracks"][0]["gain_db"].as_f64(), Some(0.0));
    s.ok(&["redo", "P"]);
    s.ok(&["redo", "P"]);
    assert_eq!(s.show("P"), moved);
    assert!(s.fails(&["redo", "P"]).contains("nothing to redo"));
    // A new edit after an undo ends the redo chain.
    s.ok(&["undo", "P"]);
    s.ok(&["track", "set", "P", "Front_Left", "--pan", "0.5"]);
    assert!(s.fails(&["redo", "P"]).contains("nothing to redo"));
    // Undo all the way back removes the imported track too.
    for _ in 0..3 {
        s.ok(&["undo", "P"]);
    }
    assert!(s.show("P")["tracks"].as_array().unwrap().is_empty());
    assert!(s.fails(&["undo", "P"]).contains("nothing to undo"));
}

#[test]
fn clips_move_trim_and_go() {
    let s = Studio::new();
    s.ok(&["project", "new", "P"]);
    s.ok(&[
        "import",
        "P",
        &format!("{ALSA_SOUNDS}/Front_Left.wav"),
        "--at",
        "1",
    ]);
    let clip = |s: &Studio| s.show("P")["tracks"][0]["clips"][0].clone();
    let before = clip(&s);
    s.ok(&[
        "clip",
        "trim",
        "P",
        "Front_Left.wav",
        "--head",
        "0.25",
        "--tail",
        "0.5",
    ]);
    let after = clip(&s);
    assert_eq!(after["start"], 48_000 + 12_000);
    assert_eq!(after["offset"], 12_000);
    assert_eq!(
        after["length"].as_i64().unwrap(),
        before["length"].as_i64().unwrap() - 36_000
    );
    assert!(
        s.fails(&["clip", "trim", "P", "Front_Left.wav", "--head", "60"])
            .contains("leaves nothing")
    );
    assert!(
        s.fails(&["clip", "move", "P", "Front_Left.wav", "--to", "-1"])
            .contains("--to")
    );
    s.ok(&["clip", "rm", "P", "Front_Left.wav"]);
    assert!(
        s.show("P")["tracks"][0]["clips"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn gc_removes_only_what_no_project_uses() {
    let s = Studio::new();
    s.ok(&["project", "new", "P"]);
    s.ok(&[
        "import",
        "P",
        &format!("{ALSA_SOUNDS}/Front_Left.wav"),
        &format!("{ALSA_SOUNDS}/Front_Right.wav"),
    ]);
    // An orphan: the blob is stored, the process dies before the clip commits.
    let orphan = meshstudio()
        .arg("--data-dir")
        .arg(s.path())
        .args(["import", "P", &format!("{ALSA_SOUNDS}/Noise.wav")])
        .env("MESHSTUDIO_FAILPOINT", "after-blob")
        .output()
        .unwrap();
    assert!(!orphan.status.success());
    s.ok(&["clip", "rm", "P", "Front_Right.wav"]);
    let report = s.json(&["gc"]);
    assert_eq!(report["referenced"], 1);
    assert_eq!(
        report["tags_dropped"], 2,
        "the removed clip's and the orphan's"
    );
    assert_eq!(report["blobs_after"], 1);
    // What is still used still mixes.
    let out = s.path().join("after-gc.wav");
    s.ok(&["mixdown", "P", out.to_str().unwrap()]);
    assert_eq!(
        s.json(&["gc"])["tags_dropped"],
        0,
        "a second gc finds nothing"
    );
}

#[test]
fn export_stems_writes_one_aligned_wav_per_track() {
    let s = Studio::new();
    s.ok(&["project", "new", "P"]);
    s.ok(&["import", "P", &format!("{ALSA_SOUNDS}/Front_Left.wav")]);
    s.ok(&[
        "import",
        "P",
        &format!("{ALSA_SOUNDS}/Rear_Left.wav"),
        "--at",
        "1",
    ]);
    s.ok(&["track", "set", "P", "Front_Left", "--mute"]);
    let dir = s.path().join("stems");
    s.ok(&["export-stems", "P", dir.to_str().unwrap()]);
    let files = listing(&dir);
    assert_eq!(files, ["01 Front_Left.wav", "02 Rear_Left.wav"]);
    let rear = read_wav(&Path::new(ALSA_SOUNDS).join("Rear_Left.wav")).frames();
    let a = read_wav(&dir.join(&files[0]));
    let b = read_wav(&dir.join(&files[1]));
    assert_eq!(a.frames(), 48_000 + rear, "both as long as the song");
    assert_eq!(b.frames(), a.frames());
    let peak = |x: &[f32]| x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(
        peak(&a.samples) > 0.05,
        "mute does not silence an exported stem"
    );
    assert!(
        peak(&b.channel(0)[..47_000]) < 1e-4,
        "the second track starts at 1 s"
    );
}

#[test]
fn a_database_in_use_is_reported_not_waited_on() {
    let s = Studio::new();
    s.ok(&["project", "new", "P"]);
    let long = s.path().join("long.wav");
    long_noise(&long, 240);
    let mut import = meshstudio()
        .arg("--data-dir")
        .arg(s.path())
        .args(["import", "P", long.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let scratch = s.path().join("tmp");
    wait_until(
        std::time::Duration::from_secs(30),
        "the import to start encoding",
        || scratch.exists() && !listing(&scratch).is_empty(),
    );
    let err = s.fails(&["project", "list"]);
    assert!(
        err.contains("in use by another meshstudio process"),
        "{err}"
    );
    assert!(import.wait().unwrap().success());
    assert_eq!(s.show("P")["tracks"].as_array().unwrap().len(), 1);
}

/// A tmpfs of `megabytes` mounted at a new dir; unmounted on drop.
struct TinyDisk {
    dir: tempfile::TempDir,
}

impl TinyDisk {
    fn new(megabytes: u32) -> Self {
        let dir = tempdir();
        let size = format!("size={megabytes}m");
        tool(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &size,
                "tmpfs",
                dir.path().to_str().unwrap(),
            ],
        );
        TinyDisk { dir }
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_full_disk_fails_cleanly_and_changes_nothing() {
    // Root is needed to mount a tmpfs; CI runs as root.
    let disk = TinyDisk::new(4);
    let data = disk.dir.path().join("node");
    let run = |args: &[&str]| {
        meshstudio()
            .arg("--data-dir")
            .arg(&data)
            .args(args)
            .output()
            .unwrap()
    };
    assert!(run(&["init"]).status.success());
    assert!(run(&["project", "new", "P"]).status.success());
    let show = || run(&["project", "show", "P", "--json"]).stdout;
    let before = show();
    let big = tempdir();
    let wav = big.path().join("ten-minutes.wav");
    noise(&wav, 48_000, 2, 600, &[]);
    let out = run(&["import", "P", wav.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("No space left"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(show(), before, "the project is unchanged");
    let scratch = data.join("tmp");
    assert!(
        !scratch.exists() || listing(&scratch).is_empty(),
        "no half-written stem left"
    );
}

#[test]
fn markers_and_comments_are_part_of_the_song() {
    let s = Studio::new();
    s.ok(&["config", "set", "author", "Ayanda"]);
    s.ok(&["project", "new", "P"]);
    s.ok(&["track", "add", "P", "Vocals"]);
    s.ok(&["marker", "add", "P", "30", "Chorus"]);
    s.ok(&["marker", "add", "P", "12.5", "Verse 2"]);
    s.ok(&[
        "comment",
        "add",
        "P",
        "breathe before the high note",
        "--track",
        "Vocals",
        "--at",
        "31",
    ]);
    let v = s.show("P");
    let markers: Vec<_> = v["markers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].clone(), m["at"].clone()))
        .collect();
    assert_eq!(
        markers,
        [
            (json_s("Verse 2"), 600_000.into()),
            (json_s("Chorus"), 1_440_000.into())
        ]
    );
    let c = &v["comments"][0];
    assert_eq!(
        (c["author"].as_str(), c["at"].as_i64()),
        (Some("Ayanda"), Some(1_488_000))
    );
    assert_eq!(c["track"], v["tracks"][0]["id"]);
    assert!(
        s.fails(&["marker", "add", "P", "-1", "Before"])
            .contains("not a time")
    );
    s.ok(&["marker", "rm", "P", "Chorus"]);
    assert_eq!(s.show("P")["markers"].as_array().unwrap().len(), 1);
    s.ok(&["undo", "P"]);
    assert_eq!(
        s.show("P")["markers"].as_array().unwrap().len(),
        2,
        "undo brings the marker back"
    );
}

fn json_s(s: &str) -> Value {
    Value::from(s)
}

/// Needs the sound server `scripts/test` starts (a PulseAudio null sink).
#[test]
fn devices_lists_the_sound_servers_default_input_and_output() {
    let s = Studio::new();
    let v = s.json(&["devices"]);
    for side in ["inputs", "outputs"] {
        let list = v[side].as_array().expect("a list");
        let default = list
            .iter()
            .find(|d| d["default"] == true)
            .unwrap_or_else(|| panic!("no default among {side}: {v}"));
        assert_eq!(default["id"], "alsa:default", "{default}");
        let rates = default["rates"].as_array().unwrap();
        assert!(rates.contains(&Value::from(48_000)), "{default}");
        assert!(default["channels"].as_u64().unwrap() >= 2, "{default}");
        assert!(
            default["formats"]
                .as_array()
                .unwrap()
                .contains(&Value::from("f32"))
        );
        assert!(
            default["buffer_frames"]["min"].as_u64().is_some(),
            "{default}"
        );
    }
    let human = s.ok(&["devices"]);
    assert!(human.contains("* alsa:default"), "{human}");
}
