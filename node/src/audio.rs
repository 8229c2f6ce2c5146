//! Audio: the one `render()` mixing function, the offline mixdown that
//! drives it, and the real-time engine (devices or WAV files) for
//! recording, playback and calibration. Knows nothing of yrs/CRDT, redb
//! or the network.

pub mod calibrate;
pub mod click;
pub mod devices;
pub mod engine;
pub mod midi_in;
pub mod mixdown;
pub mod render;
pub mod stem;
pub mod synth;
pub mod take;
