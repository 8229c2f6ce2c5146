//! Any bytes as a Standard MIDI File — an imported .mid or a peer's
//! synced take: parse under limits, write each track back and parse again.
//! Errors are fine; panics, hangs, runaway memory and a round trip that
//! changes the events are bugs.
#![no_main]

libfuzzer_sys::fuzz_target!(
    // Panics the codec catches and reports as errors are not crashes;
    // every other panic (a round trip that changes the events) still aborts.
    init: meshstudio_codec::install_panic_hook(),
    |data: &[u8]| {
        let _ = meshstudio_codec::fuzzing::smf_round_trip(data);
    }
);
