//! Any bytes through the whole import path: format detection, demux,
//! decode (symphonia or libopus), MP4 edit lists, downmix, resampling.
//! Errors are fine; panics, hangs and runaway memory are bugs.
#![no_main]

libfuzzer_sys::fuzz_target!(
    // Panics the codec catches and reports as errors are not crashes;
    // every other panic still aborts for libFuzzer.
    init: meshstudio_codec::install_panic_hook(),
    |data: &[u8]| {
        let _ = meshstudio_codec::fuzzing::decode_all(data);
    }
);
