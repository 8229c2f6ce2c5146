//! A clip's audio from an Ogg Opus stem file: decoded front to back from
//! the clip's offset, mono duplicated to both channels — the `ClipSource`
//! that mixdown reads.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use meshstudio_codec::OggOpusReader;

use super::mixdown::{ClipSource, MixError};
use super::render::CHANNELS;

/// Reads one clip's frames out of a stem file.
pub struct StemClip {
    reader: OggOpusReader<BufReader<File>>,
    /// Stem frames still to skip before the clip's first frame.
    skip: u64,
    /// Decoded frames not yet handed out (stereo), and how far we are in them.
    pending: Vec<f32>,
    used: usize,
    done: bool,
    /// (track, clip, stem name) for error messages.
    who: (usize, usize, String),
}

impl StemClip {
    /// Opens `path` positioned at stem frame `offset`, for clip `clip` of
    /// track `track`, known to people as `stem`.
    pub fn open(
        path: &Path,
        offset: u64,
        (track, clip): (usize, usize),
        stem: &str,
    ) -> Result<Self, MixError> {
        let fail = |reason: String| MixError::Source {
            track,
            clip,
            stem: stem.to_string(),
            reason,
        };
        let file = File::open(path).map_err(|e| fail(e.to_string()))?;
        let reader = OggOpusReader::new(BufReader::new(file)).map_err(|e| fail(e.to_string()))?;
        Ok(StemClip {
            reader,
            skip: offset,
            pending: Vec::new(),
            used: 0,
            done: false,
            who: (track, clip, stem.to_string()),
        })
    }

    /// Decodes the next packet into `pending` as stereo; false at the end.
    fn refill(&mut self) -> Result<bool, String> {
        self.pending.clear();
        self.used = 0;
        let channels = self.reader.channels();
        let Some(block) = self.reader.read_block().map_err(|e| e.to_string())? else {
            return Ok(false);
        };
        if channels == 1 {
            self.pending.extend(block.iter().flat_map(|&x| [x, x]));
        } else {
            self.pending.extend_from_slice(block);
        }
        let frames = (self.pending.len() / CHANNELS) as u64;
        let skip = self.skip.min(frames);
        self.skip -= skip;
        self.used = skip as usize * CHANNELS;
        Ok(true)
    }
}

impl ClipSource for StemClip {
    fn read(&mut self, out: &mut [f32]) -> Result<usize, MixError> {
        let mut written = 0;
        while written < out.len() && !self.done {
            if self.used == self.pending.len() {
                let more = self.refill().map_err(|reason| MixError::Source {
                    track: self.who.0,
                    clip: self.who.1,
                    stem: self.who.2.clone(),
                    reason,
                })?;
                self.done = !more;
                continue;
            }
            let n = (self.pending.len() - self.used).min(out.len() - written);
            out[written..written + n].copy_from_slice(&self.pending[self.used..self.used + n]);
            self.used += n;
            written += n;
        }
        Ok(written / CHANNELS)
    }
}
