//! Codecs: VP8 through libvpx and Opus through libopus, wrapped safely.

pub mod opus;
pub mod vp8;
