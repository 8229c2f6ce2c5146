//! `mixdown` with known tones: levels, pan law, mute/solo, placement,
//! loudness normalisation (checked with ffmpeg's ebur128), determinism.

use std::path::{Path, PathBuf};

use crate::studio::Studio;
use crate::support::*;

/// A mono sine made by sox: `seconds` long at `freq` Hz and `dbfs` peak.
fn tone(dir: &Path, name: &str, freq: u32, dbfs: f64, seconds: u32) -> PathBuf {
    let path = dir.join(name);
    let (f, g, sec) = (freq.to_string(), dbfs.to_string(), seconds.to_string());
    tool(
        "sox",
        &[
            "-n",
            "-r",
            "48000",
            "-c",
            "1",
            "-b",
            "24",
            s(&path),
            "synth",
            &sec,
            "sine",
            &f,
            "gain",
            &g,
        ],
    );
    path
}

/// Level (dBFS peak of a sine) of `freq` in `x`, by Goertzel over whole periods.
fn level_db(x: &[f32], freq: f64) -> f64 {
    let period = 48_000.0 / freq;
    let n = ((x.len() as f64 / period).floor() * period) as usize;
    let w = std::f64::consts::TAU * freq / 48_000.0;
    let (mut re, mut im) = (0.0, 0.0);
    for (i, &v) in x[..n].iter().enumerate() {
        re += v as f64 * (w * i as f64).cos();
        im += v as f64 * (w * i as f64).sin();
    }
    20.0 * (2.0 * (re * re + im * im).sqrt() / n as f64).log10()
}

/// Mixes the project to a float WAV and returns (left, right), middle second only.
fn mix(s: &Studio, project: &str) -> (Vec<f32>, Vec<f32>) {
    let out = s.path().join("mix.wav");
    s.ok(&["mixdown", project, s_(&out), "--format", "f32"]);
    let w = read_wav(&out);
    assert_eq!(w.channels, 2);
    let mid = |c: Vec<f32>| c[48_000..96_000].to_vec();
    (mid(w.channel(0)), mid(w.channel(1)))
}

fn s_(p: &Path) -> &str {
    s(p)
}

/// Two tracks: 440 Hz at -12 dBFS and 1 kHz at -6 dBFS, 3 s each.
fn two_tones() -> Studio {
    let st = Studio::new();
    st.ok(&["project", "new", "Tones"]);
    let a = tone(st.path(), "a440.wav", 440, -12.0, 3);
    let b = tone(st.path(), "b1000.wav", 1000, -6.0, 3);
    st.ok(&["import", "Tones", s(&a), s(&b)]);
    st
}

#[test]
fn track_gain_and_the_pan_law_hold_to_a_tenth_of_a_db() {
    let st = two_tones();
    st.ok(&[
        "track", "set", "Tones", "a440", "--gain", "-6", "--pan", "-1",
    ]);
    let (l, r) = mix(&st, "Tones");
    // Hard left: all of it left, -12 - 6 dB.
    assert!(
        (level_db(&l, 440.0) + 18.0).abs() < 0.1,
        "{}",
        level_db(&l, 440.0)
    );
    assert!(level_db(&r, 440.0) < -80.0);
    // Centre: -3.01 dB on each side.
    for side in [&l, &r] {
        let got = level_db(side, 1000.0);
        assert!((got + 9.01).abs() < 0.1, "centre pan: {got}");
    }
}

#[test]
fn mute_and_solo_decide_what_plays() {
    let st = two_tones();
    st.ok(&["track", "set", "Tones", "b1000", "--mute"]);
    let (l, _) = mix(&st, "Tones");
    assert!(level_db(&l, 1000.0) < -80.0 && level_db(&l, 440.0) > -16.0);
    st.ok(&["track", "set", "Tones", "b1000", "--unmute", "--solo"]);
    let (l, _) = mix(&st, "Tones");
    assert!(level_db(&l, 440.0) < -80.0 && level_db(&l, 1000.0) > -10.0);
}

#[test]
fn clips_start_where_they_are_placed() {
    let st = Studio::new();
    st.ok(&["project", "new", "P"]);
    let a = tone(st.path(), "late.wav", 1000, -6.0, 1);
    st.ok(&["import", "P", s(&a), "--at", "1"]);
    let out = st.path().join("m.wav");
    st.ok(&["mixdown", "P", s(&out), "--format", "f32"]);
    let left = read_wav(&out).channel(0);
    assert_eq!(left.len(), 96_000, "ends with the clip");
    let before: f32 = left[..47_990].iter().map(|x| x.abs()).fold(0.0, f32::max);
    let after: f32 = left[48_010..48_100]
        .iter()
        .map(|x| x.abs())
        .fold(0.0, f32::max);
    assert!(
        before < 1e-3 && after > 0.1,
        "silence {before} then tone {after}"
    );
}

#[test]
fn normalize_reaches_the_target_loudness() {
    let st = Studio::new();
    st.ok(&["project", "new", "Quiet"]);
    let a = tone(st.path(), "quiet.wav", 1000, -30.0, 5);
    st.ok(&["import", "Quiet", s(&a)]);
    let out = st.path().join("loud.wav");
    st.ok(&["mixdown", "Quiet", s(&out), "--normalize", "-14"]);
    let (lufs, peak) = ffmpeg_loudness(&out);
    assert!((lufs + 14.0).abs() <= 0.5, "ffmpeg measures {} LUFS", lufs);
    assert!(peak <= -0.9, "true peak {}", peak);
}

#[test]
fn the_same_project_gives_the_same_bytes() {
    let st = two_tones();
    let (a, b) = (st.path().join("1.wav"), st.path().join("2.wav"));
    st.ok(&["mixdown", "Tones", s(&a)]);
    st.ok(&["mixdown", "Tones", s(&b)]);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

#[test]
fn a_missing_stem_is_named_and_nothing_is_written() {
    let st = two_tones();
    std::fs::remove_dir_all(st.path().join("blobs")).unwrap();
    let out = st.path().join("never.wav");
    let err = st.fails(&["mixdown", "Tones", s(&out)]);
    assert!(
        err.contains("a440.wav") && err.contains("b1000.wav"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn clip_gain_and_fades_shape_the_sound() {
    let st = Studio::new();
    st.ok(&["project", "new", "P"]);
    let a = tone(st.path(), "t.wav", 1000, -6.0, 3);
    st.ok(&["import", "P", s(&a)]);
    st.ok(&[
        "clip",
        "set",
        "P",
        "t.wav",
        "--gain",
        "-6",
        "--fade-in",
        "1",
        "--fade-out",
        "0.5",
    ]);
    let out = st.path().join("m.wav");
    st.ok(&["mixdown", "P", s(&out), "--format", "f32"]);
    let left = read_wav(&out).channel(0);
    // Steady part: -6 (tone) -6 (clip) -3.01 (centre pan).
    let steady = level_db(&left[60_000..108_000], 1000.0);
    assert!((steady + 15.01).abs() < 0.1, "steady level {steady}");
    // Half-way through the 1 s linear fade-in: half the amplitude (-6.02 dB).
    let mid_fade = level_db(&left[24_000 - 240..24_000 + 240], 1000.0);
    assert!(
        (mid_fade - steady + 6.02).abs() < 0.2,
        "mid fade-in {mid_fade}"
    );
    // The fade-out ends in silence.
    let tail: f32 = left[left.len() - 48..]
        .iter()
        .fold(0.0, |m, v| m.max(v.abs()));
    assert!(tail < 1e-3, "last samples {tail}");
}
