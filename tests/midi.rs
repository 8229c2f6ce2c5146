//! MIDI tracks: Standard MIDI Files made and read by a reference library
//! (mido, Debian's python3-mido), imported, exported, mixed down through
//! the real General MIDI SoundFont (Debian's timgm6mb-soundfont).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use midir::os::unix::VirtualOutput;
use serde_json::Value;

use crate::studio::Studio;
use crate::support::*;

/// Debian's python, where python3-mido lives (the PATH python may be another).
const PYTHON: &str = "/usr/bin/python3";
const SOUNDFONT: &str = "/usr/share/sounds/sf2/TimGM6mb.sf2";
/// Note timing survives import and export within a millisecond.
const TIMING_TOLERANCE_S: f64 = 0.001;

/// Runs a mido script with `path` as `sys.argv[1]`; returns its stdout.
fn mido(script: &str, path: &Path) -> String {
    tool(
        PYTHON,
        &["-c", &format!("import sys, json, mido\n{script}"), s(path)],
    )
}

/// A two-track song (format 1, 480 ppq, a tempo change): keys on channel 0
/// with velocities, lengths, sustain pedal and pitch bend; drums on 9.
pub fn two_track_song(dir: &Path) -> PathBuf {
    let path = dir.join("song.mid");
    mido(
        r#"
m = mido.MidiFile(type=1, ticks_per_beat=480)
c = mido.MidiTrack(); m.tracks.append(c)
c.append(mido.MetaMessage('set_tempo', tempo=600000))
c.append(mido.MetaMessage('set_tempo', tempo=428571, time=1920))
k = mido.MidiTrack(); m.tracks.append(k)
k.append(mido.MetaMessage('track_name', name='Keys'))
k.append(mido.Message('program_change', program=4))
k.append(mido.Message('control_change', control=64, value=127, time=10))
for i, note in enumerate([60, 62, 64, 65, 67, 69, 71, 72]):
    k.append(mido.Message('note_on', note=note, velocity=30 + 11 * i, time=60 + 7 * i))
    k.append(mido.Message('pitchwheel', pitch=-8192 + 2000 * i, time=30))
    k.append(mido.Message('note_off', note=note, velocity=40, time=200 + 13 * i))
k.append(mido.Message('control_change', control=64, value=0, time=5))
d = mido.MidiTrack(); m.tracks.append(d)
d.append(mido.MetaMessage('track_name', name='Drums'))
for i in range(4):
    d.append(mido.Message('note_on', channel=9, note=36 + 2 * i, velocity=100, time=480 if i else 0))
    d.append(mido.Message('note_on', channel=9, note=36 + 2 * i, velocity=0, time=120))
m.save(sys.argv[1])
"#,
        &path,
    );
    path
}

/// (channel, key, velocity, start s, end s)
type Note = (u8, u8, u8, f64, f64);

/// The notes of a file as mido plays it (tempo applied): sorted
/// [channel, key, velocity, start s, end s], plus pitch bends [channel, value, s].
fn notes_of(path: &Path) -> (Vec<Note>, Vec<(u8, i64, f64)>) {
    let out = mido(
        r#"
t, held, notes, bends = 0.0, {}, [], []
for msg in mido.MidiFile(sys.argv[1]):
    t += msg.time
    if msg.type == 'note_on' and msg.velocity > 0:
        held[(msg.channel, msg.note)] = (msg.velocity, t)
    elif msg.type in ('note_on', 'note_off') and (msg.channel, msg.note) in held:
        v, start = held.pop((msg.channel, msg.note))
        notes.append([msg.channel, msg.note, v, start, t])
    elif msg.type == 'pitchwheel':
        bends.append([msg.channel, msg.pitch, t])
print(json.dumps([sorted(notes), bends]))
"#,
        path,
    );
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    let notes = v[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let u = |i: usize| n[i].as_u64().unwrap() as u8;
            let f = |i: usize| n[i].as_f64().unwrap();
            (u(0), u(1), u(2), f(3), f(4))
        })
        .collect();
    let bends = v[1]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b[0].as_u64().unwrap() as u8,
                b[1].as_i64().unwrap(),
                b[2].as_f64().unwrap(),
            )
        })
        .collect();
    (notes, bends)
}

fn assert_same_notes(a: &[Note], b: &[Note]) {
    assert_eq!(a.len(), b.len(), "{a:?}\n{b:?}");
    for (x, y) in a.iter().zip(b) {
        assert_eq!((x.0, x.1, x.2), (y.0, y.1, y.2), "{x:?} vs {y:?}");
        assert!(
            (x.3 - y.3).abs() <= TIMING_TOLERANCE_S,
            "start {x:?} vs {y:?}"
        );
        assert!(
            (x.4 - y.4).abs() <= TIMING_TOLERANCE_S,
            "end {x:?} vs {y:?}"
        );
    }
}

#[test]
fn import_then_export_keeps_every_note() {
    let st = Studio::new();
    st.ok(&["project", "new", "Song"]);
    let song = two_track_song(st.path());
    let reply = st.json(&["import", "Song", s(&song)]);
    let names: Vec<&str> = reply["imported"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["track_name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["Keys", "Drums"],
        "one MIDI track per SMF track with notes"
    );
    let show = st.show("Song");
    assert!(
        show["tracks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["kind"] == "midi")
    );
    assert_eq!(show["soundfont"], "TimGM6mb.sf2");

    let mut exported = Vec::new();
    let mut bends = Vec::new();
    for track in ["Keys", "Drums"] {
        let out = st.path().join(format!("{track}.mid"));
        st.ok(&["export-midi", "Song", track, s(&out)]);
        let (n, b) = notes_of(&out);
        exported.extend(n);
        bends.extend(b);
    }
    exported.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (original, original_bends) = notes_of(&song);
    assert_eq!(original.len(), 12);
    assert_same_notes(&original, &exported);
    assert_eq!(bends.len(), original_bends.len());
    for (x, y) in bends.iter().zip(&original_bends) {
        assert_eq!((x.0, x.1), (y.0, y.1));
        assert!((x.2 - y.2).abs() <= TIMING_TOLERANCE_S);
    }
}

/// Power of `x` at `hz` (Goertzel over a Hann window), in dB.
fn power_db(x: &[f32], hz: f64) -> f64 {
    let n = x.len() as f64;
    let w = 2.0 * std::f64::consts::PI * hz / 48_000.0;
    let (mut s1, mut s2) = (0.0, 0.0);
    for (i, v) in x.iter().enumerate() {
        let hann = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n).cos();
        let s0 = f64::from(*v) * hann + 2.0 * w.cos() * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    10.0 * (s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2)
        .max(1e-30)
        .log10()
}

#[test]
fn a_midi_track_mixes_down_with_energy_at_its_notes() {
    let st = Studio::new();
    st.ok(&["project", "new", "Song"]);
    let path = st.path().join("flute.mid");
    // A flute (GM 74): A3 (220 Hz) for 1 s, then C#5 (554.37 Hz) for 1 s.
    mido(
        r#"
m = mido.MidiFile(type=0, ticks_per_beat=480)
t = mido.MidiTrack(); m.tracks.append(t)
t.append(mido.Message('program_change', program=73))
t.append(mido.Message('note_on', note=57, velocity=110))
t.append(mido.Message('note_off', note=57, time=960))
t.append(mido.Message('note_on', note=73, velocity=110, time=480))
t.append(mido.Message('note_off', note=73, time=960))
m.save(sys.argv[1])
"#,
        &path,
    );
    st.ok(&["import", "Song", s(&path)]);
    let out = st.path().join("mix.wav");
    st.ok(&["mixdown", "Song", s(&out), "--format", "f32"]);
    let left = read_wav(&out).channel(0);
    let window = |from: f64| &left[(from * 48_000.0) as usize..((from + 0.5) * 48_000.0) as usize];
    let (low, high) = (window(0.3), window(1.8));
    let (a3, cs5, off) = (220.0, 554.37, 311.0);
    for (x, on, other) in [(low, a3, cs5), (high, cs5, a3)] {
        let p = power_db(x, on);
        assert!(
            p > power_db(x, other) + 20.0,
            "{on} Hz stands out over {other} Hz"
        );
        assert!(
            p > power_db(x, off) + 20.0,
            "{on} Hz stands out over {off} Hz"
        );
    }
    let rms = (low.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / low.len() as f64).sqrt();
    assert!(rms > 0.01, "the flute is audible: rms {rms}");
}

#[test]
fn hostile_or_empty_midi_files_are_one_clear_error_and_store_nothing() {
    let st = Studio::new();
    st.ok(&["project", "new", "Song"]);
    let dir = st.path();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    // A header chunk that claims 4 GiB; an unknown format; a track that
    // breaks off inside its only note (what came before is kept, as every
    // player does: here nothing); a file whose only track is a tempo.
    let cases = [
        (write("huge.mid", b"MThd\xff\xff\xff\xff\0\x01"), "malformed midi"),
        (
            write("cut.mid", b"MThd\0\0\0\x06\0\0\0\x01\0\x60MTrk\x7f\xff\xff\xff\0\x90"),
            "plays no notes",
        ),
        (
            write("format7.mid", b"MThd\0\0\0\x06\0\x07\0\x01\0\x60MTrk\0\0\0\0"),
            "malformed midi",
        ),
        (
            write("silent.mid", b"MThd\0\0\0\x06\0\0\0\x01\0\x60MTrk\0\0\0\x0b\0\xff\x51\x03\x07\xa1\x20\0\xff\x2f\0"),
            "plays no notes",
        ),
    ];
    for (path, why) in &cases {
        let err = st.fails(&["import", "Song", s(path)]);
        assert!(
            err.contains(s(path)) || err.contains(path.file_name().unwrap().to_str().unwrap()),
            "{err}"
        );
        assert!(err.to_lowercase().contains(why), "{err}");
    }
    assert_eq!(st.show("Song")["tracks"].as_array().unwrap().len(), 0);
    let data = st.path().join("blobs").join("data");
    assert!(
        !data.exists() || listing(&data).is_empty(),
        "no blob stored"
    );
}

#[test]
fn a_different_local_soundfont_is_a_warning_and_a_bad_one_an_error() {
    let st = Studio::new();
    st.ok(&["project", "new", "Song"]);
    let song = two_track_song(st.path());
    st.ok(&["import", "Song", s(&song)]);
    let out = st.path().join("mix.wav");
    let same = st.run(&["mixdown", "Song", s(&out)]);
    assert!(same.status.success());
    assert!(!String::from_utf8_lossy(&same.stderr).contains("warning"));

    let bad = st.path().join("bad.sf2");
    std::fs::write(&bad, b"RIFF\0\0\0\0sfbk").unwrap();
    let err = st.fails(&["config", "set", "soundfont", s(&bad)]);
    assert!(err.contains("bad.sf2"), "{err}");

    // The same font with one sample changed: it loads, but is not the project's.
    let mut font = std::fs::read(SOUNDFONT).unwrap();
    let middle = font.len() / 2;
    font[middle] ^= 0x01;
    let other = st.path().join("Other.sf2");
    std::fs::write(&other, font).unwrap();
    st.ok(&["config", "set", "soundfont", s(&other)]);
    let differs = st.run(&["mixdown", "Song", s(&out)]);
    assert!(differs.status.success());
    let stderr = String::from_utf8_lossy(&differs.stderr);
    assert!(
        stderr.contains("warning") && stderr.contains("Other.sf2"),
        "{stderr}"
    );
}

/// A virtual keyboard: a MIDI output port of the test's own on JACK's
/// default server (scripts/audio-env starts one with the dummy driver).
struct Keyboard {
    out: midir::MidiOutputConnection,
    /// A unique part of the port's name, for `record --midi`.
    name: String,
}

impl Keyboard {
    fn new(tag: &str) -> Keyboard {
        let name = format!("kbd-{tag}-{}", std::process::id());
        let client = midir::MidiOutput::new(&name)
            .expect("a JACK server runs (scripts/test starts one via scripts/audio-env)");
        let out = client.create_virtual("keys").expect("a virtual MIDI port");
        Keyboard { out, name }
    }

    fn send(&mut self, message: &[u8]) {
        self.out.send(message).expect("sent");
    }
}

/// Bytes of the take files a recording has on disk.
fn take_files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir.join("takes"))
        .into_iter()
        .flatten()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect()
}

/// `record Song --midi <the keyboard> args…`, running, its output piped.
fn record_keys(st: &Studio, kb: &Keyboard, args: &[&str]) -> std::process::Child {
    st.command(&[&["record", "Song", "--midi", kb.name.as_str()][..], args].concat())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until a `record --midi` hears the keyboard: a harmless controller
/// (general purpose #5), sent until the take's log on disk holds one —
/// proof the output callbacks run. A recording that ended instead fails
/// the test with its error.
fn wait_until_heard(kb: &mut Keyboard, rec: &mut std::process::Child, dir: &Path) {
    wait_until(
        Duration::from_secs(20),
        "the take to hear the keyboard",
        || {
            if let Some(status) = rec.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(e) = rec.stderr.as_mut() {
                    std::io::Read::read_to_string(e, &mut err).unwrap();
                }
                panic!("record ended before the take ran ({status}): {err}");
            }
            kb.send(&[0xB0, 0x50, 0]);
            take_files(dir, "mev")
                .iter()
                .any(|f| std::fs::metadata(f).is_ok_and(|m| m.len() > 8))
        },
    );
}

/// Plays `keys` one every `gap`, each held `hold`; returns when each was
/// played, from the first.
fn play(kb: &mut Keyboard, keys: &[(u8, u8)], gap: Duration, hold: Duration) -> Vec<f64> {
    let start = Instant::now();
    let mut sent = Vec::new();
    for (i, &(key, velocity)) in keys.iter().enumerate() {
        let due = start + gap * i as u32;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        kb.send(&[0x90, key, velocity]);
        sent.push(start.elapsed().as_secs_f64());
        std::thread::sleep(hold);
        kb.send(&[0x80, key, 0]);
    }
    sent
}

#[test]
fn a_keyboard_take_keeps_pitch_velocity_and_timing_and_sounds_live() {
    let st = Studio::new();
    st.ok(&["project", "new", "Song"]);
    let mut kb = Keyboard::new("take");
    let heard = st.path().join("heard.wav");
    let mut rec = record_keys(
        &st,
        &kb,
        &["--seconds", "4", "--output", s(&heard), "--json"],
    );
    wait_until_heard(&mut kb, &mut rec, st.path());
    let keys: Vec<(u8, u8)> = (0..8).map(|i| (60 + 2 * i, 30 + 12 * i)).collect();
    kb.send(&[0xB0, 64, 127]); // sustain pedal down
    let sent = play(
        &mut kb,
        &keys,
        Duration::from_millis(250),
        Duration::from_millis(100),
    );
    kb.send(&[0xE0, 0x00, 0x60]); // a bend up
    kb.send(&[0xB0, 64, 0]);
    let out = rec.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["notes"], 8, "{reply}");
    assert_eq!(reply["engine"]["midi_dropped"], 0);

    let mid = st.path().join("take.mid");
    st.ok(&["export-midi", "Song", "MIDI", s(&mid)]);
    let (notes, bends) = notes_of(&mid);
    let mut by_start = notes.clone();
    by_start.sort_by(|a, b| a.3.total_cmp(&b.3));
    let played: Vec<(u8, u8)> = by_start.iter().map(|n| (n.1, n.2)).collect();
    assert_eq!(played, keys, "pitch and velocity of every note");
    let first = by_start[0].3;
    let errors_ms: Vec<f64> = by_start
        .iter()
        .zip(&sent)
        .map(|(n, t)| ((n.3 - first) - t) * 1000.0)
        .collect();
    eprintln!("note timing errors (ms): {errors_ms:.2?}");
    assert!(errors_ms.iter().all(|e| e.abs() <= 5.0), "{errors_ms:?}");
    assert_eq!(bends.len(), 1);

    // Live monitoring: the synth was on the output from the first note on.
    let left = read_wav(&heard).channel(0);
    let rms =
        |x: &[f32]| (x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / x.len() as f64).sqrt();
    let loud = left.chunks(4_800).map(rms).fold(0.0, f64::max);
    assert!(
        loud > 0.01,
        "the keys were heard: loudest 100 ms at RMS {loud}"
    );
    assert_eq!(take_files(st.path(), "mev"), Vec::<PathBuf>::new());
}

/// Note-offs in a MIDI take's log as it is on disk (16-byte records after
/// the 8-byte magic: frame, then status and data bytes).
fn logged_note_offs(dir: &Path) -> usize {
    take_files(dir, "mev")
        .iter()
        .filter_map(|f| std::fs::read(f).ok())
        .map(|bytes| {
            let records = bytes.get(8..).unwrap_or_default().chunks_exact(16);
            records.filter(|r| r[8] & 0xF0 == 0x80).count()
        })
        .sum()
}

#[test]
fn kill_9_mid_take_keeps_every_note_its_log_holds() {
    let st = Studio::new();
    st.ok(&["project", "new", "Song"]);
    let mut kb = Keyboard::new("crash");
    let heard = st.path().join("heard.wav");
    let mut rec = record_keys(&st, &kb, &["--track", "Keys", "--output", s(&heard)]);
    wait_until_heard(&mut kb, &mut rec, st.path());
    let keys: Vec<(u8, u8)> = (0..6).map(|i| (48 + i, 100)).collect();
    play(
        &mut kb,
        &keys,
        Duration::from_millis(300),
        Duration::from_millis(100),
    );
    // The log gets each batch as it comes, so within a second or so here
    // (more on a loaded machine: a CI run once needed longer). Killed
    // once it holds the last note-off, nothing of it may be lost.
    let deadline = Instant::now() + Duration::from_secs(10);
    while logged_note_offs(st.path()) < keys.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let logged = logged_note_offs(st.path());
    if logged < keys.len() {
        rec.kill().unwrap();
        let out = rec.wait_with_output().unwrap();
        panic!(
            "after 10 s the take's log holds {logged} of {} note-offs; record said: {}",
            keys.len(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    rec.kill().unwrap(); // SIGKILL
    rec.wait().unwrap();
    let out = st.run(&["recover", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["recovered"][0]["notes"], 6, "{reply}");
    assert_eq!(reply["recovered"][0]["track_name"], "Keys");
    assert_eq!(take_files(st.path(), "mev"), Vec::<PathBuf>::new());
    let show = st.show("Song");
    assert_eq!(show["tracks"][0]["kind"], "midi");
}

#[test]
fn devices_lists_the_keyboard_and_a_wrong_port_is_one_clear_error() {
    let st = Studio::new();
    st.ok(&["project", "new", "Song"]);
    let kb = Keyboard::new("list");
    let devices = st.json(&["devices"]);
    let ports = devices["midi_inputs"].as_array().unwrap();
    assert!(
        ports.iter().any(|p| p.as_str().unwrap().contains(&kb.name)),
        "{devices}"
    );
    let err = st.fails(&[
        "record",
        "Song",
        "--midi",
        "no-such-keyboard",
        "--seconds",
        "1",
    ]);
    assert!(
        err.contains("no-such-keyboard") && err.contains(&kb.name),
        "{err}"
    );
    assert!(take_files(st.path(), "mev").is_empty());
    assert_eq!(st.show("Song")["tracks"].as_array().unwrap().len(), 0);
}

#[test]
fn playing_midi_tracks_is_the_mixdown_sample_for_sample() {
    let st = Studio::new();
    st.ok(&["project", "new", "Song"]);
    let song = two_track_song(st.path());
    st.ok(&["import", "Song", s(&song)]);
    let mix = st.path().join("mix.wav");
    st.ok(&["mixdown", "Song", s(&mix), "--format", "f32"]);
    let whole = st.path().join("play.wav");
    st.ok(&["play", "Song", "--output", s(&whole), "--fast"]);
    let mixed = read_wav(&mix).samples;
    assert_eq!(read_wav(&whole).samples, mixed);
    // Starting inside the clips: the synth catches up on what came before.
    let part = st.path().join("part.wav");
    let args = ["--from", "1", "--to", "2", "--output", s(&part), "--fast"];
    st.ok(&[&["play", "Song"][..], &args[..]].concat());
    assert_eq!(read_wav(&part).samples, &mixed[48_000 * 2..96_000 * 2]);
}

#[test]
fn a_keyboard_take_lines_up_with_the_transport_after_a_count_in() {
    let st = Studio::new();
    st.ok(&["project", "new", "Song"]); // 120 bpm, 4/4: a bar's count-in is 2 s
    let mut kb = Keyboard::new("count");
    let heard = st.path().join("heard.wav");
    let mut rec = record_keys(
        &st,
        &kb,
        &[
            "--count-in",
            "1",
            "--at",
            "10",
            "--seconds",
            "2",
            "--output",
            s(&heard),
            "--json",
        ],
    );
    wait_until_heard(&mut kb, &mut rec, st.path());
    // A quiet note inside the count-in (the take drops it), a loud one after it.
    play(
        &mut kb,
        &[(50, 20)],
        Duration::ZERO,
        Duration::from_millis(50),
    );
    let after_count_in = Instant::now() + Duration::from_millis(2_600);
    std::thread::sleep(after_count_in.saturating_duration_since(Instant::now()));
    play(
        &mut kb,
        &[(72, 127)],
        Duration::ZERO,
        Duration::from_millis(300),
    );
    let out = rec.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mid = st.path().join("take.mid");
    st.ok(&["export-midi", "Song", "MIDI", s(&mid)]);
    let (notes, _) = notes_of(&mid);
    assert_eq!(
        notes.len(),
        1,
        "the count-in's note is not in the take: {notes:?}"
    );
    assert_eq!((notes[0].1, notes[0].2), (72, 127));
    // Output frame 0 was song time 10 − 2 s; the loud note's sound starts
    // in the output where the take says it was played: later by at most
    // the file clock's 256-frame period, JACK's 64, and the piano's attack
    // to half its peak (8.5–9.7 ms measured in all).
    let left = read_wav(&heard).channel(0);
    let loudest = left[96_000..].iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let onset = 96_000
        + left[96_000..]
            .iter()
            .position(|v| v.abs() > loudest / 2.0)
            .unwrap();
    let placed = (notes[0].3 - 8.0) * 48_000.0;
    let lag_ms = (onset as f64 - placed) / 48.0;
    eprintln!("sound onset after the take's note: {lag_ms:.2} ms");
    assert!((-1.0..=15.0).contains(&lag_ms), "{lag_ms} ms");
}
