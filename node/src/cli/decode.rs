//! `meshstudio decode`: any audio file (an .opus stem above all) → 48 kHz WAV.

use meshstudio_codec::{DecodeReport, WavFormat, decode_wav};
use serde_json::json;

use super::job::transcode;
use super::progress::{self, Bars};
use super::{DecodeArgs, Failure, SampleFormat};

pub(crate) fn run(args: DecodeArgs) -> Result<(), Failure> {
    let bars = Bars::new(progress::wanted(args.json));
    let observer = bars.file(&args.input);
    let format = match args.format {
        SampleFormat::S16 => WavFormat::Int16,
        SampleFormat::S24 => WavFormat::Int24,
        SampleFormat::F32 => WavFormat::Float32,
    };
    let result = transcode(&args.input, &args.output, |reader, writer| {
        decode_wav(reader, writer, format, &observer)
    });
    observer.done();
    let report = result.map_err(|e| e.report(&args.input, &args.output))?;
    print_result(&args, &report);
    Ok(())
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
