//! The parts of the node that other build targets need as a library: the
//! sync wire checks, driven by the fuzzer in `node/fuzz`. The binary uses
//! this same module (one copy of the code).

#[path = "net/update_shape.rs"]
pub mod update_shape;
#[path = "net/wire.rs"]
pub mod wire;
