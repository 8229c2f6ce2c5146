//! Shared helpers: run the binary and the reference tools, make inputs,
//! read WAV files, wait on conditions.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub const ALSA_SOUNDS: &str = "/usr/share/sounds/alsa";
pub const FREEDESKTOP_SOUNDS: &str = "/usr/share/sounds/freedesktop/stereo";

/// The `meshstudio` binary under test.
pub fn meshstudio() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meshstudio"))
}

/// `meshstudio`, inside network namespace `netns` when one is given.
pub fn meshstudio_in(netns: Option<&str>) -> Command {
    let Some(ns) = netns else {
        return meshstudio();
    };
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(env!("CARGO_BIN_EXE_meshstudio"));
    cmd
}

/// Runs `meshstudio args...` and returns its output, whatever the status.
pub fn run(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    meshstudio()
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .expect("spawn meshstudio")
}

/// Runs `meshstudio args...` and asserts success.
pub fn run_ok(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let out = run(args);
    assert!(
        out.status.success(),
        "meshstudio {:?} failed: {}",
        args.iter()
            .map(|a| a.as_ref().to_owned())
            .collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a reference tool and asserts success; returns stdout+stderr.
pub fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} is missing ({e}); run scripts/setup"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?} failed:\n{text}");
    text
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("meshstudio-test")
        .tempdir()
        .unwrap()
}

/// A WAV file's samples as f32 (any integer/float format hound reads).
pub struct Wav {
    pub rate: u32,
    pub channels: usize,
    pub samples: Vec<f32>,
}

impl Wav {
    pub fn frames(&self) -> usize {
        self.samples.len() / self.channels
    }

    /// One channel's samples.
    pub fn channel(&self, c: usize) -> Vec<f32> {
        self.samples
            .iter()
            .skip(c)
            .step_by(self.channels)
            .copied()
            .collect()
    }
}

pub fn read_wav(path: &Path) -> Wav {
    let mut r = hound::WavReader::open(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let spec = r.spec();
    let samples = match spec.sample_format {
        hound::SampleFormat::Float => r.samples::<f32>().map(Result::unwrap).collect(),
        hound::SampleFormat::Int => {
            let full = (1u64 << (spec.bits_per_sample - 1)) as f32;
            r.samples::<i32>()
                .map(|x| x.unwrap() as f32 / full)
                .collect()
        }
    };
    Wav {
        rate: spec.sample_rate,
        channels: spec.channels as usize,
        samples,
    }
}

/// Decodes with the reference decoder at 48 kHz and reads the result.
pub fn opusdec(opus: &Path) -> Wav {
    let wav = opus.with_extension("opusdec.wav");
    tool(
        "opusdec",
        &["--quiet", "--rate", "48000", "--float", s(opus), s(&wav)],
    );
    let decoded = read_wav(&wav);
    assert_eq!(decoded.rate, 48_000);
    decoded
}

/// (frames, rate) of a file as sox (libsndfile, libvorbisfile, libFLAC) reads it.
pub fn soxi(path: &Path) -> (usize, u32) {
    let frames = tool("soxi", &["-s", s(path)]).trim().parse().unwrap();
    let rate = tool("soxi", &["-r", s(path)]).trim().parse().unwrap();
    (frames, rate)
}

/// Frames at 48 kHz for `frames` at `rate`, rounded up.
pub fn frames_at_48k(frames: usize, rate: u32) -> usize {
    (frames as u64 * 48_000).div_ceil(rate as u64) as usize
}

/// Asserts opusinfo reads the file without a warning or error.
pub fn assert_opusinfo_clean(opus: &Path) {
    let text = tool("opusinfo", &[s(opus)]);
    // opusinfo flags problems as "WARNING: ..." / "ERROR: ..." (case matters:
    // file names such as dialog-error.opus are fine).
    assert!(
        !text.contains("WARNING") && !text.contains("ERROR"),
        "opusinfo on {opus:?}:\n{text}"
    );
}

/// Files in `dir`, sorted by name.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Polls `cond` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Copies a system sound into `dir` (so derived files land next to it).
pub fn copy_in(dir: &Path, src: &str) -> PathBuf {
    let src = Path::new(src);
    let dst = dir.join(src.file_name().unwrap());
    std::fs::copy(src, &dst).unwrap_or_else(|e| panic!("{src:?}: {e}; run scripts/setup"));
    dst
}

/// (integrated LUFS, true peak dBTP) of a file, by ffmpeg's ebur128 filter.
pub fn ffmpeg_loudness(path: &Path) -> (f64, f64) {
    let args = [
        "-nostats",
        "-i",
        s(path),
        "-af",
        "ebur128=peak=true",
        "-f",
        "null",
        "-",
    ];
    let text = tool("ffmpeg", &args);
    let summary = &text[text.rfind("Summary:").unwrap()..];
    let after = |key: &str| -> f64 {
        let rest = &summary[summary.find(key).unwrap() + key.len()..];
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    (after("I:"), after("Peak:"))
}

/// A pink-noise WAV made by sox (`-R`: the same bytes every run).
pub fn noise(path: &Path, rate: u32, channels: u32, seconds: u32, extra: &[&str]) {
    let (rate, channels, secs) = (rate.to_string(), channels.to_string(), seconds.to_string());
    let mut args = vec![
        "-R",
        "-n",
        "-r",
        &rate,
        "-c",
        &channels,
        s(path),
        "synth",
        &secs,
        "pinknoise",
    ];
    args.extend_from_slice(extra);
    tool("sox", &args);
}

/// Stereo 44.1 kHz noise: long enough (with the resampling it needs) to
/// interrupt an import or encode mid-way.
pub fn long_noise(path: &Path, seconds: u32) {
    noise(path, 44_100, 2, seconds, &[]);
}
