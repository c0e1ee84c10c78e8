//! What the app remembers between runs: name, last room, server and devices, as JSON in the
//! app's config directory. A missing or unreadable file means defaults, never a failed start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use confab_engine::audio_processing::ProcessingSettings;
use serde::{Deserialize, Serialize};

/// `server` value meaning "run the signaling server inside the app".
pub const BUILT_IN: &str = "built-in";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub name: String,
    pub room: String,
    /// `built-in` or a ws:// / wss:// URL.
    pub server: String,
    /// Device ids from `list_devices`; empty means the first available.
    pub camera: String,
    pub microphone: String,
    pub speaker: String,
    /// Run the built-in server on all interfaces so others on the LAN can join.
    pub host_on_network: bool,
    /// Echo cancellation, noise suppression, gain control (all on unless turned off).
    pub audio_processing: ProcessingSettings,
    /// Servers whose certificate the user chose to trust (a self-signed one), by
    /// `host:port`: the certificate's SHA-256 fingerprint, pinned from then on.
    pub trusted_certs: BTreeMap<String, String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            name: String::new(),
            room: String::new(),
            server: BUILT_IN.into(),
            camera: String::new(),
            microphone: String::new(),
            speaker: String::new(),
            host_on_network: false,
            audio_processing: ProcessingSettings::default(),
            trusted_certs: BTreeMap::new(),
        }
    }
}

pub fn path(config_dir: &Path) -> PathBuf {
    config_dir.join("settings.json")
}

pub fn load(config_dir: &Path) -> Settings {
    match std::fs::read_to_string(path(config_dir)) {
        Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "settings file is damaged; using defaults");
            Settings::default()
        }),
        Err(_) => Settings::default(),
    }
}

/// Writes atomically (temp file + rename) so a crash never leaves half a file.
pub fn save(config_dir: &Path, s: &Settings) -> std::io::Result<()> {
    std::fs::create_dir_all(config_dir)?;
    let tmp = config_dir.join("settings.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(s).expect("settings serialize"))?;
    std::fs::rename(tmp, path(config_dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let dir = std::env::temp_dir().join(format!("confab-settings-{}", std::process::id()));
        assert_eq!(load(&dir), Settings::default());
        let s = Settings { name: "Ada".into(), room: "standup".into(), ..Default::default() };
        save(&dir, &s).unwrap();
        assert_eq!(load(&dir), s);
        std::fs::write(path(&dir), "{ not json").unwrap();
        assert_eq!(load(&dir), Settings::default());
        // Unknown or missing fields are fine (older and newer versions).
        std::fs::write(path(&dir), r#"{"name":"Bo","future":1}"#).unwrap();
        assert_eq!(load(&dir).name, "Bo");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
