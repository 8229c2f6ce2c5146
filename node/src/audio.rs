//! Audio: the one `render()` mixing function and the offline mixdown that drives it;
//! later real-time playback and recording. Knows nothing of yrs/CRDT, redb or the network.

pub mod devices;
pub mod mixdown;
pub mod render;
pub mod stem;
