//! Any bytes through the whole import path: format detection, demux,
//! decode (symphonia or libopus), MP4 edit lists, downmix, resampling.
//! Errors are fine; panics, hangs and runaway memory are bugs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = meshstudio_codec::fuzzing::decode_all(data);
});
