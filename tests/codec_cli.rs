//! `encode`, `decode` and `probe` on real files nobody on the team wrote,
//! checked with the reference tools.

use std::path::{Path, PathBuf};

use crate::support::*;

/// Encodes every input into `out_dir` in one batch and checks each stem
/// against the reference decoder: clean opusinfo, exact sample count.
fn encode_batch_and_check(inputs: &[PathBuf], out_dir: &Path, expected_frames: &[usize]) {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
        vec![&"encode", &"--json", &"--out-dir", &out_dir];
    for i in inputs {
        args.push(i);
    }
    let out = run_ok(&args);
    let lines = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        lines.lines().count(),
        inputs.len(),
        "one JSON line per file:\n{lines}"
    );
    for (input, &expected) in inputs.iter().zip(expected_frames) {
        let stem = out_dir
            .join(input.file_stem().unwrap())
            .with_extension("opus");
        assert_opusinfo_clean(&stem);
        let decoded = opusdec(&stem);
        assert_eq!(
            decoded.frames(),
            expected,
            "{input:?}: opusdec sample count"
        );
        assert!(decoded.channels <= 2);
    }
}

#[test]
fn system_sounds_become_sample_exact_stems() {
    let dir = tempdir();
    let mut inputs = Vec::new();
    for sounds in [ALSA_SOUNDS, FREEDESKTOP_SOUNDS] {
        for entry in
            std::fs::read_dir(sounds).unwrap_or_else(|e| panic!("{sounds}: {e}; run scripts/setup"))
        {
            inputs.push(entry.unwrap().path());
        }
    }
    inputs.sort();
    assert!(
        inputs.len() >= 20,
        "expected the alsa-utils and freedesktop sounds"
    );
    // sox reads .oga through libvorbisfile, the reference Vorbis decoder
    // (ffmpeg drops the first 128 samples of some of these files).
    let expected: Vec<usize> = inputs
        .iter()
        .map(|i| {
            let (frames, rate) = soxi(i);
            frames_at_48k(frames, rate)
        })
        .collect();
    let out = dir.path().join("stems");
    encode_batch_and_check(&inputs, &out, &expected);
}

/// ffmpeg-made variants of one alsa-utils sound, and the 48 kHz frame count each must give.
fn variants(dir: &Path) -> Vec<(PathBuf, usize)> {
    let src = copy_in(dir, &format!("{ALSA_SOUNDS}/Front_Left.wav"));
    let frames = read_wav(&src).frames();
    let made = |name: &str, args: &[&str]| {
        let out = dir.join(name);
        let mut full = vec!["-v", "error", "-y", "-i", s(&src)];
        full.extend_from_slice(args);
        full.push(s(&out));
        tool("ffmpeg", &full);
        out
    };
    let at_441 = made("v_44k1.wav", &["-ar", "44100"]);
    let frames_441 = read_wav(&at_441).frames();
    vec![
        (
            made("v_mp3.mp3", &["-c:a", "libmp3lame", "-b:a", "192k"]),
            frames,
        ),
        (made("v_flac.flac", &[]), frames),
        (made("v_aac.m4a", &["-c:a", "aac", "-b:a", "160k"]), frames),
        (made("v_vorbis.ogg", &["-c:a", "libvorbis"]), frames),
        (made("v_ffmpeg.opus", &["-c:a", "libopus"]), frames),
        (made("v_u8.wav", &["-c:a", "pcm_u8"]), frames),
        (made("v_s24.wav", &["-c:a", "pcm_s24le"]), frames),
        (made("v_s32.wav", &["-c:a", "pcm_s32le"]), frames),
        (made("v_f32.wav", &["-c:a", "pcm_f32le"]), frames),
        (
            made(
                "v_5_1.wav",
                &["-af", "pan=5.1|c0=c0|c1=c0|c2=c0|c3=c0|c4=c0|c5=c0"],
            ),
            frames,
        ),
        (
            made("v_stereo_22k05.flac", &["-ac", "2", "-ar", "22050"]),
            0,
        ),
        (at_441, frames_at_48k(frames_441, 44_100)),
    ]
    .into_iter()
    .map(|(path, frames)| {
        // Resampled variants: the count follows from what the file holds.
        let frames = if frames == 0 {
            let (frames, rate) = soxi(&path);
            frames_at_48k(frames, rate)
        } else {
            frames
        };
        (path, frames)
    })
    .collect()
}

#[test]
fn every_format_a_studio_brings_becomes_a_sample_exact_stem() {
    let dir = tempdir();
    let (inputs, expected): (Vec<_>, Vec<_>) = variants(dir.path()).into_iter().unzip();
    let out = dir.path().join("stems");
    encode_batch_and_check(&inputs, &out, &expected);
    // Surround folds to stereo; mono stays mono.
    assert_eq!(opusdec(&out.join("v_5_1.opus")).channels, 2);
    assert_eq!(opusdec(&out.join("v_u8.opus")).channels, 1);
}

/// Cross-correlation of `a` against `b` at lags in `-max..=max`; returns the best lag.
fn best_lag(a: &[f32], b: &[f32], max: isize) -> isize {
    let n = a.len().min(b.len()) as isize;
    let score = |lag: isize| -> f64 {
        let mut acc = 0.0;
        for i in max..n - max {
            acc += a[i as usize] as f64 * b[(i + lag) as usize] as f64;
        }
        acc
    };
    (-max..=max)
        .max_by(|&x, &y| score(x).total_cmp(&score(y)))
        .unwrap()
}

fn rms_db(x: &[f32]) -> f64 {
    let p = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / x.len() as f64;
    10.0 * p.log10()
}

/// Frequency (Hz) of the strongest DFT bin between 20 Hz and 20 kHz, 5 Hz steps.
fn spectral_peak(x: &[f32], rate: u32) -> f64 {
    let x = &x[..x.len().min(rate as usize / 2)];
    let power = |f: f64| {
        let w = std::f64::consts::TAU * f / rate as f64;
        let (mut re, mut im) = (0.0, 0.0);
        for (i, &v) in x.iter().enumerate() {
            re += v as f64 * (w * i as f64).cos();
            im += v as f64 * (w * i as f64).sin();
        }
        re * re + im * im
    };
    (4..4000)
        .map(|k| k as f64 * 5.0)
        .max_by(|&a, &b| power(a).total_cmp(&power(b)))
        .unwrap()
}

/// Encodes a sox-made signal at `rate` and compares our stem, decoded by
/// opusdec, with sox's own 48 kHz version of the input.
fn compare_with_sox(rate: u32, synth: &[&str], max_lag: isize) -> (isize, f64, Vec<f32>) {
    let dir = tempdir();
    let input = dir.path().join("in.wav");
    let rate_s = rate.to_string();
    let mut args = vec![
        "-R",
        "-n",
        "-r",
        &rate_s,
        "-c",
        "1",
        "-b",
        "24",
        s(&input),
        "synth",
        "3",
    ];
    args.extend_from_slice(synth);
    tool("sox", &args);
    let reference = dir.path().join("ref.wav");
    tool(
        "sox",
        &[
            s(&input),
            "-b",
            "32",
            "-e",
            "float",
            s(&reference),
            "rate",
            "-v",
            "48000",
        ],
    );
    let stem = dir.path().join("in.opus");
    run_ok(&[&"encode", &input, &stem]);
    let ours = opusdec(&stem).channel(0);
    let reference = read_wav(&reference).channel(0);
    assert_eq!(ours.len(), frames_at_48k(3 * rate as usize, rate));
    // The middle two seconds: away from the edges, where Opus and sox both ramp.
    let mid = |x: &[f32]| x[24_000..120_000].to_vec();
    let (ours, reference) = (mid(&ours), mid(&reference));
    let lag = best_lag(&reference, &ours, max_lag);
    (lag, rms_db(&ours) - rms_db(&reference), ours)
}

#[test]
fn a_tone_keeps_its_time_level_and_pitch() {
    for rate in [48_000, 44_100] {
        let (lag, level, ours) = compare_with_sox(rate, &["sine", "1000", "gain", "-6"], 20);
        assert!(lag.abs() <= 1, "{rate} Hz: tone arrives {lag} samples late");
        assert!(level.abs() < 0.5, "{rate} Hz: level off by {level:.2} dB");
        let peak = spectral_peak(&ours, 48_000);
        assert!(
            (peak - 1000.0).abs() <= 5.0,
            "{rate} Hz: spectral peak at {peak} Hz"
        );
    }
}

#[test]
fn noise_stays_aligned_to_the_sample() {
    // Broadband noise correlates at exactly one lag, so any offset shows.
    for rate in [48_000, 44_100, 22_050] {
        let (lag, level, _) = compare_with_sox(rate, &["pinknoise", "gain", "-10"], 400);
        assert!(
            lag.abs() <= 1,
            "{rate} Hz: noise arrives {lag} samples late"
        );
        assert!(level.abs() < 1.0, "{rate} Hz: level off by {level:.2} dB");
    }
}

#[test]
fn lossy_imports_stay_aligned_to_the_sample() {
    // mp3 (LAME gapless header) and m4a (edit list) carry encoder delay that
    // must be cut, or every imported beat would start late.
    let dir = tempdir();
    let original = dir.path().join("noise.wav");
    noise(&original, 48_000, 1, 3, &["gain", "-10"]);
    let reference = read_wav(&original).samples;
    for (name, codec) in [("n.mp3", "libmp3lame"), ("n.m4a", "aac")] {
        let lossy = dir.path().join(name);
        tool(
            "ffmpeg",
            &[
                "-v",
                "error",
                "-i",
                s(&original),
                "-c:a",
                codec,
                "-b:a",
                "192k",
                s(&lossy),
            ],
        );
        let stem = lossy.with_extension("opus");
        run_ok(&[&"encode", &lossy, &stem]);
        let ours = opusdec(&stem).samples;
        assert_eq!(ours.len(), reference.len(), "{name}: length");
        let lag = best_lag(&reference[24_000..120_000], &ours[24_000..120_000], 2000);
        assert!(lag.abs() <= 1, "{name}: arrives {lag} samples late");
    }
}

#[test]
fn decode_gives_the_same_samples_as_opusdec() {
    let dir = tempdir();
    let input = copy_in(dir.path(), &format!("{ALSA_SOUNDS}/Noise.wav"));
    let stem = dir.path().join("noise.opus");
    run_ok(&[&"encode", &input, &stem]);
    for (format, bits) in [("s16", 16), ("s24", 24), ("f32", 32)] {
        let wav = dir.path().join(format!("ours_{format}.wav"));
        run_ok(&[&"decode", &"--format", &format, &stem, &wav]);
        let spec = hound::WavReader::open(&wav).unwrap().spec();
        assert_eq!((spec.sample_rate, spec.bits_per_sample), (48_000, bits));
        let ours = read_wav(&wav);
        let reference = opusdec(&stem);
        assert_eq!(ours.frames(), reference.frames());
        assert_eq!(ours.frames(), read_wav(&input).frames());
        let worst = ours
            .samples
            .iter()
            .zip(&reference.samples)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst < 2e-3,
            "{format}: differs from opusdec by up to {worst}"
        );
    }
}

#[test]
fn probe_reports_format_length_and_loudness() {
    let dir = tempdir();
    let input = copy_in(dir.path(), &format!("{ALSA_SOUNDS}/Front_Center.wav"));
    let out = run_ok(&[&"probe", &"--json", &input]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["container"], "wave");
    assert_eq!(v["codec"], "pcm_s16le");
    assert_eq!(v["channels"], 1);
    assert_eq!(v["sample_rate"], 48_000);
    assert_eq!(
        v["frames"].as_u64().unwrap() as usize,
        read_wav(&input).frames()
    );
    // ffmpeg's ebur128 filter is the reference meter.
    let (ref_lufs, ref_peak) = ffmpeg_loudness(&input);
    let lufs = v["integrated_lufs"].as_f64().unwrap();
    assert!(
        (lufs - ref_lufs).abs() < 0.2,
        "ours {lufs}, ffmpeg {}",
        ref_lufs
    );
    let peak = v["true_peak_dbtp"].as_f64().unwrap();
    assert!(
        (peak - ref_peak).abs() < 0.3,
        "ours {peak}, ffmpeg {}",
        ref_peak
    );
}

#[test]
fn bitrate_option_changes_the_size() {
    let dir = tempdir();
    let input = copy_in(dir.path(), &format!("{ALSA_SOUNDS}/Noise.wav"));
    let size = |kbps: &str| {
        let out = dir.path().join(format!("n{kbps}.opus"));
        run_ok(&[&"encode", &"--bitrate", &kbps, &input, &out]);
        std::fs::metadata(&out).unwrap().len()
    };
    let (low, high) = (size("32"), size("256"));
    assert!(
        high > low * 4,
        "32 kbit/s: {low} bytes, 256 kbit/s: {high} bytes"
    );
}

#[test]
fn same_input_gives_the_same_bytes() {
    // Two sites importing the same file must get the same blob hash.
    let dir = tempdir();
    let input = copy_in(dir.path(), &format!("{ALSA_SOUNDS}/Rear_Left.wav"));
    let (a, b) = (dir.path().join("a.opus"), dir.path().join("b.opus"));
    run_ok(&[&"encode", &input, &a]);
    run_ok(&[&"encode", &input, &b]);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}
