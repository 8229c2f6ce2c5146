//! meshstudio's integration tests: one test binary that runs the real
//! `meshstudio` binary against real files, checked with real reference
//! tools (opusdec, opusinfo, ffmpeg, sox).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod audio;
mod codec_cli;
mod codec_errors;
mod crash;
mod linkemu;
mod midi;
mod mixdown;
mod netns;
mod node;
mod studio;
mod sync;
