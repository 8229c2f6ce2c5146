//! The codec's one error type. Messages say what is wrong with the *data*;
//! callers add which file it was.

use std::io;

/// Everything that can go wrong turning bytes into samples or samples into files.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error(
        "not an audio file we can decode (tried: wav, flac, mp3, ogg vorbis, ogg opus, m4a/aac)"
    )]
    UnknownFormat,
    #[error("the file holds no audio track")]
    NoAudioTrack,
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("malformed {format} data: {detail}")]
    Malformed {
        format: &'static str,
        detail: String,
    },
    #[error("truncated: {0}")]
    Truncated(String),
    #[error("over a limit: {0}")]
    Limit(String),
    #[error("opus encoder: {0}")]
    Encoder(String),
    #[error("cancelled")]
    Cancelled,
}

pub type Result<T, E = CodecError> = std::result::Result<T, E>;

impl CodecError {
    pub(crate) fn malformed(format: &'static str, detail: impl Into<String>) -> Self {
        CodecError::Malformed {
            format,
            detail: detail.into(),
        }
    }
}
