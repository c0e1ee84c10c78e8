//! confab-engine: the call engine behind the desktop app and the headless peer.

pub mod codec;
pub mod devices;
pub mod frame;
pub mod jitter;
pub mod mixer;
pub mod stamp;
pub mod tone;
