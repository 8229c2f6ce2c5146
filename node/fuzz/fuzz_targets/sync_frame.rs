//! Any bytes as a sync frame from a peer: kind, hello, state vector (and
//! the diff it asks for), update (decoded and applied to a document with
//! content). Rejections are fine; panics, hangs and huge allocations are bugs.
#![no_main]

libfuzzer_sys::fuzz_target!(
    // Panics the wire checks catch (yrs' debug assertions on hostile input)
    // are rejections, not crashes; every other panic still aborts.
    init: meshstudio_node::wire::install_panic_hook(),
    |data: &[u8]| {
        let doc = meshstudio_node::wire::fuzz_doc();
        let _ = meshstudio_node::wire::receive_into(&doc, data);
    }
);
