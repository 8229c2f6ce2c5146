//! Bad inputs and interrupted work: one clear line on stderr naming the
//! file, exit status ≠ 0, and nothing left behind.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::support::*;

/// Runs `encode input out.opus` and `decode input out.wav` in a dir holding
/// only `input`; both must fail with one line naming `input` and `keyword`
/// and leave the dir as it was.
fn assert_rejected(input: &Path, keyword: &str) {
    let dir = input.parent().unwrap();
    let before = listing(dir);
    for (cmd, out) in [("encode", "out.opus"), ("decode", "out.wav"), ("probe", "")] {
        let out_path = dir.join(out);
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&cmd, &input];
        if !out.is_empty() {
            args.push(&out_path);
        }
        let result = run(&args);
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(1), "{cmd} {input:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{cmd}: one line, got:\n{stderr}");
        assert!(stderr.contains(s(input)), "{cmd}: names the file: {stderr}");
        assert!(
            stderr.contains(keyword),
            "{cmd}: says '{keyword}': {stderr}"
        );
        assert_eq!(listing(dir), before, "{cmd} left files behind");
    }
}

fn file_with(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempdir();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

#[test]
fn an_empty_file_is_rejected() {
    let (_d, p) = file_with("empty.wav", b"");
    assert_rejected(&p, "empty");
}

#[test]
fn random_bytes_are_rejected() {
    // A fixed xorshift stream: "random", but the same every run.
    let bytes = meshstudio_node::wire::garbage(&mut 0x9e37_79b9_7f4a_7c15, 100_000);
    let (_d, p) = file_with("noise.wav", &bytes);
    assert_rejected(&p, "not an audio file");
}

#[test]
fn a_text_file_named_wav_is_rejected() {
    let (_d, p) = file_with(
        "lyrics.wav",
        "Verse 1\nWe carry the studio on our backs\n"
            .repeat(100)
            .as_bytes(),
    );
    assert_rejected(&p, "not an audio file");
}

#[test]
fn a_truncated_wav_is_rejected() {
    let full = std::fs::read(format!("{ALSA_SOUNDS}/Front_Right.wav")).unwrap();
    let (_d, p) = file_with("cut.wav", &full[..full.len() / 2]);
    assert_rejected(&p, "truncated");
}

#[test]
fn a_truncated_opus_stem_is_rejected() {
    let dir = tempdir();
    let stem = dir.path().join("whole.opus");
    run_ok(&[&"encode", &format!("{ALSA_SOUNDS}/Noise.wav"), &stem]);
    let full = std::fs::read(&stem).unwrap();
    let (_d, p) = file_with("cut.opus", &full[..full.len() * 2 / 3]);
    assert_rejected(&p, "truncated");
}

/// A WAV header with a field patched to an absurd value.
fn patched_wav(offset: usize, value: &[u8]) -> Vec<u8> {
    let mut bytes = std::fs::read(format!("{ALSA_SOUNDS}/Front_Right.wav")).unwrap();
    let fmt = bytes.windows(4).position(|w| w == b"fmt ").unwrap() + 8;
    bytes[fmt + offset..fmt + offset + value.len()].copy_from_slice(value);
    bytes
}

#[test]
fn absurd_headers_are_rejected() {
    // 1000 channels.
    let (_d, p) = file_with("wide.wav", &patched_wav(2, &1000u16.to_le_bytes()));
    assert_rejected(&p, "channel");
    // A sample rate of 4 GHz.
    let (_d, p) = file_with("fast.wav", &patched_wav(4, &4_000_000_000u32.to_le_bytes()));
    assert_rejected(&p, "sample rate");
}

#[test]
fn a_missing_input_is_reported() {
    let dir = tempdir();
    let missing = dir.path().join("nope.wav");
    assert_rejected(&missing, "No such file");
}

#[test]
fn unwritable_outputs_are_reported_and_leave_nothing() {
    let dir = tempdir();
    let input = copy_in(dir.path(), &format!("{ALSA_SOUNDS}/Front_Right.wav"));
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"x").unwrap();
    let before = listing(dir.path());
    for target in [
        dir.path().join("no/such/dir/out.opus"),
        blocker.join("out.opus"),
        dir.path().to_path_buf(),
    ] {
        let result = run(&[&"encode", &input, &target]);
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(1), "{target:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("cannot write") && stderr.contains(s(&target)),
            "{stderr}"
        );
        assert_eq!(listing(dir.path()), before);
    }
}

#[test]
fn an_output_over_its_own_input_is_refused() {
    let dir = tempdir();
    let input = copy_in(dir.path(), &format!("{FREEDESKTOP_SOUNDS}/bell.oga"));
    let stem = dir.path().join("bell.opus");
    run_ok(&[&"encode", &input, &stem]);
    let before = std::fs::read(&stem).unwrap();
    let result = run(&[&"encode", &stem, &"--out-dir", &dir.path()]);
    assert_eq!(result.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&result.stderr).contains("input file"));
    assert_eq!(std::fs::read(&stem).unwrap(), before);
}

#[test]
fn colliding_batch_names_are_rejected_before_any_work() {
    let dir = tempdir();
    for sub in ["a", "b"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
        std::fs::copy(
            format!("{ALSA_SOUNDS}/Front_Left.wav"),
            dir.path().join(sub).join("take.wav"),
        )
        .unwrap();
    }
    let first = dir.path().join("a/first.wav");
    std::fs::copy(format!("{ALSA_SOUNDS}/Front_Left.wav"), &first).unwrap();
    let out = dir.path().join("stems");
    let result = run(&[
        &"encode",
        &first,
        &dir.path().join("a/take.wav"),
        &dir.path().join("b/take.wav"),
        &"--out-dir",
        &out,
    ]);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("a/take.wav") && stderr.contains("b/take.wav"),
        "{stderr}"
    );
    assert!(
        !out.join("first.opus").exists(),
        "work started before the check"
    );
}

#[test]
fn ctrl_c_stops_cleanly_and_leaves_nothing() {
    let dir = tempdir();
    let input = dir.path().join("long.wav");
    // Ten minutes at 44.1 kHz: long enough to interrupt mid-way in any build.
    long_noise(&input, 600);
    let before = listing(dir.path());
    let out = dir.path().join("long.opus");
    let mut child = meshstudio()
        .args(["encode", s(&input), s(&out)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(30), "the temp file to appear", || {
        listing(dir.path()).iter().any(|n| n.ends_with(".part"))
    });
    tool("kill", &["-INT", &child.id().to_string()]);
    let mut status = None;
    wait_until(Duration::from_secs(30), "meshstudio to stop", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(status.unwrap().code(), Some(130));
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("cancelled"), "{stderr}");
    assert_eq!(listing(dir.path()), before, "Ctrl-C left files behind");
}

#[test]
fn an_out_of_range_bitrate_is_a_usage_error() {
    let dir = tempdir();
    let input = copy_in(dir.path(), &format!("{ALSA_SOUNDS}/Front_Right.wav"));
    let before = listing(dir.path());
    for kbps in ["31", "513", "fast"] {
        let result = run(&[
            &"encode",
            &"--bitrate",
            &kbps,
            &input,
            &dir.path().join("o.opus"),
        ]);
        assert_eq!(result.status.code(), Some(2), "--bitrate {kbps}");
        assert!(String::from_utf8_lossy(&result.stderr).contains("--bitrate"));
        assert_eq!(listing(dir.path()), before);
    }
}
