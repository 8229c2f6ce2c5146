//! `meshstudio probe`: what an audio file holds, measured by decoding all of it.

use meshstudio_codec::{AudioReader, CodecError, ProbeReport, probe};
use serde_json::json;

use super::progress::{self, Bars};
use super::{Failure, ProbeArgs, report};

pub(crate) fn run(args: ProbeArgs) -> Result<(), Failure> {
    let bars = Bars::new(progress::wanted(args.json));
    let observer = bars.file(&args.file);
    let result = AudioReader::open(&args.file).and_then(|r| probe(r, &observer));
    observer.done();
    let r = match result {
        Ok(r) => r,
        Err(CodecError::Cancelled) => return Err(Failure::Cancelled),
        Err(e) => return Err(report("read", &args.file, &e)),
    };
    if args.json {
        print_json(&args, &r);
    } else {
        print_text(&args, &r);
    }
    Ok(())
}

fn print_json(args: &ProbeArgs, r: &ProbeReport) {
    let v = json!({
        "file": args.file,
        "container": r.source.container,
        "codec": r.source.codec,
        "channels": r.source.channels,
        "sample_rate": r.source.sample_rate,
        "bits_per_sample": r.source.bits_per_sample,
        "frames": r.frames,
        "duration_seconds": r.duration_seconds(),
        "integrated_lufs": r.loudness.integrated_lufs,
        "true_peak_dbtp": r.loudness.true_peak_dbtp,
    });
    println!("{v}");
}

fn print_text(args: &ProbeArgs, r: &ProbeReport) {
    let s = &r.source;
    let lufs = r.loudness.integrated_lufs.map_or_else(
        || "silent".to_string(),
        |l| format!("{l:.1} LUFS integrated"),
    );
    let peak = r
        .loudness
        .true_peak_dbtp
        .map_or_else(|| "digital silence".to_string(), |p| format!("{p:.1} dBTP"));
    let bits = s
        .bits_per_sample
        .map_or_else(String::new, |b| format!(", {b}-bit"));
    println!("file:        {}", args.file.display());
    println!("container:   {}", s.container);
    println!("codec:       {}{bits}", s.codec);
    println!("channels:    {}", s.channels);
    println!("sample rate: {} Hz", s.sample_rate);
    println!(
        "duration:    {:.3} s ({} frames)",
        r.duration_seconds(),
        r.frames
    );
    println!("loudness:    {lufs}");
    println!("true peak:   {peak}");
}
