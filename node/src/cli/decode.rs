//! `meshstudio decode`: any audio file (an .opus stem above all) → 48 kHz WAV.

use std::io::Write;
use std::sync::atomic::Ordering;

use meshstudio_codec::{AudioReader, DecodeReport, WavFormat, decode_wav};
use serde_json::json;

use super::encode::JobError;
use super::output::AtomicFile;
use super::progress::{self, Bars};
use super::{DecodeArgs, Failure, SampleFormat};

pub(crate) fn run(args: DecodeArgs) -> Result<(), Failure> {
    let bars = Bars::new(progress::wanted(args.json));
    let label = args
        .input
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into());
    let observer = bars.file(&label);
    let format = match args.format {
        SampleFormat::S16 => WavFormat::Int16,
        SampleFormat::S24 => WavFormat::Int24,
        SampleFormat::F32 => WavFormat::Float32,
    };
    let result = decode_to(&args, format, &observer);
    observer.done();
    let report = result.map_err(|e| e.report(&args.input, &args.output))?;
    print_result(&args, &report);
    Ok(())
}

fn decode_to(
    args: &DecodeArgs,
    format: WavFormat,
    observer: &progress::FileProgress,
) -> Result<DecodeReport, JobError> {
    let reader = AudioReader::open(&args.input).map_err(JobError::Read)?;
    let file = AtomicFile::create(&args.output).map_err(|e| JobError::Write(e.to_string()))?;
    let mut writer = file.writer().map_err(|e| JobError::Write(e.to_string()))?;
    let write_failed = writer.failure_flag();
    let report = decode_wav(reader, &mut writer, format, observer)
        .map_err(|e| JobError::classify(e, write_failed.load(Ordering::SeqCst)))?;
    writer.flush().map_err(|e| JobError::Write(e.to_string()))?;
    drop(writer);
    file.commit().map_err(|e| JobError::Write(e.to_string()))?;
    Ok(report)
}

fn print_result(args: &DecodeArgs, r: &DecodeReport) {
    let seconds = r.frames as f64 / 48_000.0;
    if args.json {
        let v = json!({
            "input": args.input,
            "output": args.output,
            "channels": r.channels,
            "sample_rate": 48_000,
            "frames": r.frames,
            "duration_seconds": seconds,
        });
        println!("{v}");
    } else {
        println!(
            "{} → {}: {} ch, 48000 Hz, {} frames ({:.3} s)",
            args.input.display(),
            args.output.display(),
            r.channels,
            r.frames,
            seconds
        );
    }
}
