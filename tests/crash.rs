//! Crash tests for `import`: the process dies at each durable step (the
//! debug-build failpoints) and at random moments (`kill -9`), and the data
//! dir must still open, keep every acknowledged clip, and hold no clip whose
//! length is wrong or whose stem is missing.

use std::collections::{HashMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::studio::Studio;
use crate::support::*;

const SIGABRT: i32 = 6;
const SIGKILL: i32 = 9;
/// How long one import may take before the test gives up on it.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(60);
/// The kill loop runs until this many kills landed before the acknowledgement…
const MIN_KILLS_MID_IMPORT: usize = 20;
/// …and this many imports finished anyway (so the delays reach the end)…
const MIN_COMPLETED: usize = 4;
/// …or gives up after this many rounds.
const MAX_ROUNDS: usize = 90;
/// Kill delays are drawn from [0, DELAY_SPAN × one import's duration × scale).
const DELAY_SPAN: f64 = 1.3;
/// The scale grows after a completed import and shrinks after a kill, so the
/// loop keeps landing on both sides of the end whatever the machine's speed.
const SCALE_STEP: f64 = 1.15;
const SCALE_RANGE: (f64, f64) = (0.05, 20.0);
/// Set to replay a run of the kill loop.
const SEED_VAR: &str = "MESHSTUDIO_CRASH_SEED";

/// An input file and the clip an import of it must make.
struct Source {
    path: PathBuf,
    /// Length at 48 kHz.
    frames: i64,
    channels: i64,
}

impl Source {
    fn new(path: PathBuf, channels: i64) -> Self {
        let (frames, rate) = soxi(&path);
        Source {
            frames: frames_at_48k(frames, rate) as i64,
            path,
            channels,
        }
    }

    fn name(&self) -> String {
        self.path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }
}

/// A 44.1 kHz file made by sox (`synth` arguments after the length), so the
/// import resamples as well as encodes.
fn synth(dir: &Path, name: &str, channels: i64, seconds: u32, synth: &[&str]) -> Source {
    let path = dir.join(name);
    let (c, sec) = (channels.to_string(), seconds.to_string());
    let mut args = vec!["-n", "-r", "44100", "-c", &c, "-b", "16", s(&path)];
    args.extend(["synth", &sec]);
    args.extend(synth);
    args.extend(["gain", "-6"]);
    tool("sox", &args);
    Source::new(path, channels)
}

/// Every clip of the project, by id.
fn clips(project: &Value) -> HashMap<String, Value> {
    project["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["clips"].as_array().unwrap().iter())
        .map(|c| (c["id"].as_str().unwrap().to_string(), c.clone()))
        .collect()
}

/// Asserts `clip` is what importing `src` makes.
fn assert_clip_of(clip: &Value, src: &Source, context: &str) {
    assert_eq!(clip["source"], src.name().as_str(), "{context}: {clip}");
    assert_eq!(clip["length"], src.frames, "{context}: length of {clip}");
    assert_eq!(clip["channels"], src.channels, "{context}: {clip}");
    assert_eq!(clip["start"], 0, "{context}: {clip}");
}

/// `meshstudio --data-dir D import P FILE --json`, not yet waited for.
fn spawn_import(studio: &Studio, file: &Path, failpoint: Option<&str>) -> Child {
    let mut cmd = meshstudio();
    cmd.arg("--data-dir")
        .arg(studio.path())
        .args(["import", "P"])
        .arg(file)
        .arg("--json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match failpoint {
        Some(name) => cmd.env("MESHSTUDIO_FAILPOINT", name),
        None => cmd.env_remove("MESHSTUDIO_FAILPOINT"),
    };
    cmd.spawn().expect("spawn meshstudio import")
}

/// Waits (bounded) for a child that is expected to end by itself.
fn finish(mut child: Child) -> Output {
    wait_until(IMPORT_TIMEOUT, "the import to end", || {
        child.try_wait().unwrap().is_some()
    });
    child.wait_with_output().unwrap()
}

/// The clip id an acknowledged import reports.
fn acknowledged_clip(stdout: &[u8]) -> String {
    let reply: Value = serde_json::from_slice(stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(stdout)));
    let imported = reply["imported"].as_array().unwrap();
    assert_eq!(imported.len(), 1, "{reply}");
    imported[0]["clip"].as_str().unwrap().to_string()
}

/// A normal import that must succeed; returns its clip id.
fn import_ok(studio: &Studio, src: &Source) -> String {
    let out = finish(spawn_import(studio, &src.path, None));
    assert!(
        out.status.success(),
        "import {}: {}",
        src.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    acknowledged_clip(&out.stdout)
}

/// Bounces the project: proves every clip's stem is in the blob store and decodes.
fn assert_stems_present(studio: &Studio) {
    let out = studio.path().join("mix.wav");
    studio.ok(&["mixdown", "P", s(&out)]);
    std::fs::remove_file(&out).unwrap();
}

fn crash_at(failpoint: &str, clip_survives: bool) {
    let studio = Studio::new();
    studio.ok(&["project", "new", "P"]);
    let src = Source::new(
        copy_in(studio.path(), &format!("{ALSA_SOUNDS}/Front_Center.wav")),
        1,
    );

    let out = finish(spawn_import(&studio, &src.path, Some(failpoint)));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(SIGABRT),
        "{failpoint}: the import aborts there ({:?}): {stderr}",
        out.status
    );
    assert!(
        out.stdout.is_empty(),
        "{failpoint}: no acknowledgement: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    let found = clips(&studio.show("P"));
    if clip_survives {
        assert_eq!(found.len(), 1, "{failpoint}: the committed clip stays");
        assert_clip_of(found.values().next().unwrap(), &src, failpoint);
        assert_stems_present(&studio);
    } else {
        assert!(found.is_empty(), "{failpoint}: no clip: {found:?}");
        assert!(
            studio.show("P")["tracks"].as_array().unwrap().is_empty(),
            "{failpoint}: no track either"
        );
    }

    // The same file again: its blob may already be there (or be an orphan).
    let again = import_ok(&studio, &src);
    let after = clips(&studio.show("P"));
    assert_eq!(after.len(), found.len() + 1, "{failpoint}: {after:?}");
    assert_clip_of(&after[&again], &src, failpoint);
    assert_stems_present(&studio);
}

#[test]
fn a_crash_after_the_blob_leaves_no_clip() {
    crash_at("after-blob", false);
}

#[test]
fn a_crash_after_the_commit_keeps_the_clip() {
    crash_at("after-commit", true);
}

#[test]
fn a_crash_before_the_acknowledgement_keeps_the_clip() {
    crash_at("before-ack", true);
}

/// splitmix64: small, deterministic, good enough to spread kill delays.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn seed() -> u64 {
    match std::env::var(SEED_VAR) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{SEED_VAR}={v}: not a u64")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

/// Waits for `child` until `deadline`, then kills it (SIGKILL) if it still runs.
fn kill_at(mut child: Child, deadline: Instant) -> (ExitStatus, Vec<u8>, String) {
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // Already exited (a zombie until waited for): the signal is harmless.
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status, out.stdout, stderr)
}

/// What became of one round of the kill loop.
#[derive(Default, Debug)]
struct Tally {
    completed: usize,
    killed_before_commit: usize,
    killed_after_commit: usize,
}

#[test]
fn random_kills_during_imports_lose_no_acknowledged_clip() {
    let seed = seed();
    eprintln!("kill loop: {SEED_VAR}={seed}");
    let mut rng = Rng(seed);
    let studio = Studio::new();
    studio.ok(&["project", "new", "P"]);
    let dir = studio.path();
    let sources = [
        synth(dir, "tone.wav", 2, 30, &["sine", "440"]),
        synth(dir, "noise.wav", 2, 40, &["pinknoise"]),
        synth(dir, "sweep.wav", 1, 20, &["sine", "100-8000"]),
    ];
    let by_name: HashMap<String, &Source> = sources.iter().map(|s| (s.name(), s)).collect();

    // One import of each, timed, to scale the kill delays (never asserted on).
    let mut acknowledged: HashSet<String> = HashSet::new();
    let mut durations = Vec::new();
    for src in &sources {
        let start = Instant::now();
        acknowledged.insert(import_ok(&studio, src));
        durations.push(start.elapsed());
    }
    eprintln!("kill loop: one import takes {durations:?}");

    let mut seen: HashSet<String> = clips(&studio.show("P")).into_keys().collect();
    let mut tally = Tally::default();
    let mut scale = 1.0;
    let mut rounds = 0;
    while rounds < MAX_ROUNDS
        && (tally.killed_before_commit + tally.killed_after_commit < MIN_KILLS_MID_IMPORT
            || tally.completed < MIN_COMPLETED)
    {
        rounds += 1;
        let pick = (rng.next_u64() % sources.len() as u64) as usize;
        let src = &sources[pick];
        let delay = durations[pick].mul_f64(rng.unit() * DELAY_SPAN * scale);
        let context = format!(
            "round {rounds} ({SEED_VAR}={seed}): {} after {delay:?}",
            src.name()
        );

        let child = spawn_import(&studio, &src.path, None);
        let (status, stdout, stderr) = kill_at(child, Instant::now() + delay);
        let completed = status.success();
        if completed {
            acknowledged.insert(acknowledged_clip(&stdout));
        } else {
            assert_eq!(
                status.signal(),
                Some(SIGKILL),
                "{context}: an import either finishes or is killed ({status:?}): {stderr}"
            );
        }

        let project = studio.show("P");
        let now = clips(&project);
        for id in &acknowledged {
            assert!(
                now.contains_key(id),
                "{context}: acknowledged clip {id} is gone"
            );
        }
        for id in &seen {
            assert!(
                now.contains_key(id),
                "{context}: clip {id} was there, now gone"
            );
        }
        for (id, clip) in &now {
            let name = clip["source"].as_str().unwrap();
            let src = by_name
                .get(name)
                .unwrap_or_else(|| panic!("{context}: clip {id} from an unknown file {name}"));
            assert_clip_of(clip, src, &context);
        }
        let new = now.len() - seen.len();
        assert!(new <= 1, "{context}: one import made {new} clips");
        if completed {
            assert_eq!(new, 1, "{context}: the acknowledged import made its clip");
            tally.completed += 1;
            scale /= SCALE_STEP;
        } else {
            if new == 1 {
                tally.killed_after_commit += 1;
            } else {
                tally.killed_before_commit += 1;
            }
            scale *= SCALE_STEP;
        }
        scale = scale.clamp(SCALE_RANGE.0, SCALE_RANGE.1);
        seen = now.into_keys().collect();
    }

    let scratch = dir.join("tmp");
    let leftovers = if scratch.exists() {
        listing(&scratch).len()
    } else {
        0
    };
    eprintln!(
        "kill loop: {rounds} rounds, {tally:?}, {} clips, {leftovers} scratch files left",
        seen.len()
    );
    let killed = tally.killed_before_commit + tally.killed_after_commit;
    assert!(
        killed >= MIN_KILLS_MID_IMPORT && tally.completed >= MIN_COMPLETED,
        "the delays never spread over the import ({SEED_VAR}={seed}): {tally:?}"
    );

    // After all that, the node still works and every stem is there.
    let last = import_ok(&studio, &sources[0]);
    assert_clip_of(&clips(&studio.show("P"))[&last], &sources[0], "last import");
    assert_stems_present(&studio);
}
