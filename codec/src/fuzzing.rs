//! The decode and MIDI paths as functions over bytes, shared by the
//! cargo-fuzz targets (`codec/fuzz`) and the stable tests that replay
//! their corpora.

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

/// Parses `data` as a Standard MIDI File, then writes every track back
/// (exact frame timing and song timing) and parses it again: the exact
/// form must give the very same events. Returns the events read.
pub fn smf_round_trip(data: &[u8]) -> Result<usize> {
    let tracks = crate::midi::parse_smf(data)?;
    let song = crate::midi::SmfTiming::Song {
        bpm: f64::from(data.first().copied().unwrap_or(120)),
        beats_per_bar: 4,
        beat_unit: 4,
    };
    let mut events = 0;
    for track in &tracks {
        let exact = crate::midi::write_smf(
            &track.name,
            &track.events,
            track.end_frame,
            crate::midi::SmfTiming::Frames,
        );
        let back = crate::midi::parse_smf(&exact).expect("our own file parses");
        // write_smf keeps to the limits: at most MAX_WRITTEN_EVENTS of a track.
        let kept = track.events.len().min(crate::midi::MAX_WRITTEN_EVENTS);
        assert_eq!(
            back[0].events,
            track.events[..kept],
            "frame timing round trip"
        );
        let musical = crate::midi::write_smf(&track.name, &track.events, track.end_frame, song);
        let again = crate::midi::parse_smf(&musical).expect("our own file parses");
        assert_eq!(again[0].events.len(), track.events.len());
        events += track.events.len();
    }
    Ok(events)
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

    #[test]
    fn smf_corpus_replays_without_panic() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/smf");
        let mut parsed = 0;
        for entry in std::fs::read_dir(dir).expect("the corpus is committed") {
            let data = std::fs::read(entry.expect("readable dir").path()).expect("readable");
            parsed += usize::from(smf_round_trip(&data).is_ok());
        }
        assert!(parsed >= 2, "corpus at {dir}: only {parsed} files parse");
    }

    /// Found by the fuzzer: an SMPTE division of -128 makes midly 0.5.3
    /// negate an i8 past its range (a panic in debug builds).
    #[test]
    fn a_midi_parser_panic_is_an_error() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fuzz/corpus/smf/crash-smpte-division-negate-overflow.mid"
        );
        let data = std::fs::read(path).expect("committed");
        assert!(smf_round_trip(&data).is_err());
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
