//! The decode path as one function over bytes, shared by the cargo-fuzz
//! target (`codec/fuzz`) and the stable test that replays its corpus.

use std::io::Cursor;

use crate::decode::AudioReader;
use crate::error::Result;
use crate::pipeline::Stem48k;

/// Stop a fuzz input after this many output frames (10 s): long enough to
/// cross every block boundary, short enough to keep the fuzzer fast.
const MAX_FUZZ_FRAMES: u64 = 480_000;

/// Decodes `data` as an audio file to 48 kHz; returns the frames produced.
pub fn decode_all(data: &[u8]) -> Result<u64> {
    let reader = AudioReader::from_source(Box::new(Cursor::new(data.to_vec())), None)?;
    let mut stage = Stem48k::new(reader)?;
    let channels = stage.channels() as u64;
    let mut block = Vec::new();
    let mut frames = 0;
    while frames < MAX_FUZZ_FRAMES && stage.next_block(&mut block)? {
        frames += block.len() as u64 / channels;
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every input the fuzzer kept (and every crash it found, once fixed)
    /// decodes without a panic.
    #[test]
    fn fuzz_corpus_replays_without_panic() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/decode");
        let mut count = 0;
        for entry in std::fs::read_dir(dir).expect("the corpus is committed") {
            let path = entry.expect("readable dir").path();
            let data = std::fs::read(&path).expect("readable file");
            let _ = decode_all(&data);
            count += 1;
        }
        assert!(count >= 6, "corpus at {dir} has only {count} files");
    }

    /// Found by the fuzzer: a WAVE_FORMAT_EXTENSIBLE channel mask that makes
    /// symphonia 0.6 overflow a shift (a panic in debug builds).
    #[test]
    fn a_decoder_panic_is_an_error() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fuzz/corpus/decode/crash-riff-channel-mask-shift"
        );
        let data = std::fs::read(path).expect("committed");
        assert!(decode_all(&data).is_err());
    }
}
