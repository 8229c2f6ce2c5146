//! One file in, one file out: the shape of `encode` and `decode`. Opens the
//! input, writes the output atomically, and sorts failures into "cannot
//! read", "cannot write" and "cancelled".

use std::io::Write;
use std::path::Path;

use meshstudio_codec::{AudioReader, CodecError};

use super::{Failure, report};
use crate::atomic::{AtomicFile, TrackedWriter};

/// Why one file failed; decides the wording of the error line.
pub(crate) enum JobError {
    Read(CodecError),
    Write(String),
    Cancelled,
}

impl JobError {
    /// Reports the error for `input`/`output` on stderr.
    pub(crate) fn report(self, input: &Path, output: &Path) -> Failure {
        match self {
            JobError::Read(e) => report("read", input, &e),
            JobError::Write(e) => report("write", output, &e),
            JobError::Cancelled => Failure::Cancelled,
        }
    }

    fn write(e: std::io::Error) -> Self {
        JobError::Write(e.to_string())
    }
}

/// Runs `work` from `input` into a temp file that becomes `output` only if
/// everything succeeds.
pub(crate) fn transcode<T>(
    input: &Path,
    output: &Path,
    work: impl FnOnce(AudioReader, &mut TrackedWriter) -> Result<T, CodecError>,
) -> Result<T, JobError> {
    let reader = AudioReader::open(input).map_err(JobError::Read)?;
    let file = AtomicFile::create(output).map_err(JobError::write)?;
    let mut writer = file.writer().map_err(JobError::write)?;
    let result = work(reader, &mut writer).map_err(|e| match e {
        CodecError::Cancelled => JobError::Cancelled,
        CodecError::Io(io) if writer.failed() => JobError::write(io),
        other => JobError::Read(other),
    })?;
    writer.flush().map_err(JobError::write)?;
    drop(writer);
    file.commit().map_err(JobError::write)?;
    Ok(result)
}
