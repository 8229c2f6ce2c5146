//! Any bytes as a gossip notice received on a project's topic. Refusals
//! are fine; panics, hangs and huge allocations are bugs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = meshstudio_node::notice::decode(data, "p1");
});
