//! `meshstudio encode`: audio files → Ogg Opus stems, one or many at once.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use meshstudio_codec::{EncodeReport, encode_opus};
use serde_json::json;

use super::job::transcode;
use super::progress::{self, Bars};
use super::{EncodeArgs, Failure, report};

pub(crate) fn run(args: EncodeArgs) -> Result<(), Failure> {
    let jobs = plan(&args)?;
    let workers = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, jobs.len());
    let bars = Bars::new(progress::wanted(args.json));
    let next = AtomicUsize::new(0);
    let outcome = Mutex::new(Ok(()));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                while let Some((input, output)) = jobs.get(next.fetch_add(1, Ordering::SeqCst)) {
                    if progress::interrupted() {
                        break;
                    }
                    let result = encode_file(input, output, args.bitrate, &bars, args.json);
                    if let Err(f) = result {
                        let mut o = outcome.lock().expect("no worker panics while holding it");
                        if !matches!(*o, Err(Failure::Cancelled)) {
                            *o = Err(f);
                        }
                    }
                }
            });
        }
    });
    let outcome = outcome.into_inner().expect("workers are done");
    if outcome.is_ok() && progress::interrupted() {
        return Err(Failure::Cancelled);
    }
    outcome
}

/// The (input, output) pairs, checked before any work starts.
fn plan(args: &EncodeArgs) -> Result<Vec<(PathBuf, PathBuf)>, Failure> {
    let Some(dir) = &args.out_dir else {
        let [input, output] = args.files.as_slice() else {
            eprintln!(
                "meshstudio: encode takes IN OUT.opus, or IN... --out-dir DIR (got {} files)",
                args.files.len()
            );
            return Err(Failure::Reported);
        };
        check_distinct(input, output)?;
        return Ok(vec![(input.clone(), output.clone())]);
    };
    let mut seen: HashMap<PathBuf, &PathBuf> = HashMap::new();
    let mut jobs = Vec::new();
    for input in &args.files {
        let Some(stem) = input.file_stem() else {
            return Err(report("read", input, &"not a file name"));
        };
        let output = dir.join(stem).with_extension("opus");
        if let Some(other) = seen.insert(output.clone(), input) {
            eprintln!(
                "meshstudio: {:?} and {:?} would both be written to {:?}; rename one, nothing was encoded",
                other, input, output
            );
            return Err(Failure::Reported);
        }
        check_distinct(input, &output)?;
        jobs.push((input.clone(), output));
    }
    std::fs::create_dir_all(dir).map_err(|e| report("write", dir, &e))?;
    Ok(jobs)
}

/// Refuses to write an output over its own input.
fn check_distinct(input: &Path, output: &Path) -> Result<(), Failure> {
    let same = match (input.canonicalize(), output.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        return Err(report("write", output, &"it is the input file"));
    }
    Ok(())
}

fn encode_file(
    input: &Path,
    output: &Path,
    bitrate: Option<u32>,
    bars: &Bars,
    json: bool,
) -> Result<(), Failure> {
    let observer = bars.file(input);
    let result = transcode(input, output, |reader, writer| {
        Ok(encode_opus(reader, writer, bitrate, &observer)?.1)
    });
    observer.done();
    let report = result.map_err(|e| e.report(input, output))?;
    print_result(input, output, &report, json);
    Ok(())
}

fn print_result(input: &Path, output: &Path, r: &EncodeReport, json: bool) {
    let seconds = r.frames as f64 / 48_000.0;
    let line = if json {
        json!({
            "input": input,
            "output": output,
            "channels": r.channels,
            "sample_rate": 48_000,
            "frames": r.frames,
            "duration_seconds": seconds,
            "bitrate_kbps": r.settings.bitrate_kbps,
            "complexity": r.settings.complexity,
            "source": {
                "container": r.source.container,
                "codec": r.source.codec,
                "channels": r.source.channels,
                "sample_rate": r.source.sample_rate,
            },
        })
        .to_string()
    } else {
        format!(
            "{} → {}: {} ch, {:.3} s, Opus {} kbit/s VBR (from {} {} Hz, {} ch)",
            input.display(),
            output.display(),
            r.channels,
            seconds,
            r.settings.bitrate_kbps,
            r.source.codec,
            r.source.sample_rate,
            r.source.channels
        )
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
}
