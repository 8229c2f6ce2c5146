//! Audio: the one `render()` mixing function and the offline mixdown that drives it;
//! later real-time playback and recording. Knows nothing of yrs/CRDT, redb or the network.

// Nothing calls the engine yet; the CLI's `mixdown` command will.
#![allow(dead_code)]

pub mod mixdown;
pub mod render;
