//! ICE servers for `joined`, with time-limited TURN credentials in coturn's REST format
//! (`use-auth-secret`): `username = "<expiry unix seconds>:<peer id>"`,
//! `credential = base64(HMAC-SHA1(secret, username))`. coturn recomputes the HMAC with the
//! same shared secret, so the signaling server and coturn never talk to each other.

use base64::Engine;
use confab_proto::{IceServer, PeerId};
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// STUN and TURN servers to hand out.
#[derive(Clone, Debug)]
pub struct IceConfig {
    /// `stun:` URLs, given to clients as they are.
    pub stun: Vec<String>,
    /// `turn:`/`turns:` URLs; they get credentials when `turn_secret` is set.
    pub turn: Vec<String>,
    /// coturn's `static-auth-secret`.
    pub turn_secret: Option<String>,
    /// How long credentials stay valid, in seconds.
    pub turn_ttl_s: u64,
}

impl Default for IceConfig {
    fn default() -> Self {
        IceConfig { stun: Vec::new(), turn: Vec::new(), turn_secret: None, turn_ttl_s: 3600 }
    }
}

impl IceConfig {
    /// The `ice_servers` of `joined` for `peer`, at `now_s` seconds since the Unix epoch.
    pub fn servers_for(&self, peer: &PeerId, now_s: u64) -> Vec<IceServer> {
        let mut out = Vec::new();
        if !self.stun.is_empty() {
            out.push(IceServer { urls: self.stun.clone(), username: None, credential: None });
        }
        if !self.turn.is_empty() {
            let (username, credential) = match &self.turn_secret {
                Some(secret) => {
                    let (u, c) = turn_credentials(secret, peer, now_s + self.turn_ttl_s);
                    (Some(u), Some(c))
                }
                None => (None, None),
            };
            out.push(IceServer { urls: self.turn.clone(), username, credential });
        }
        out
    }
}

/// coturn REST credentials valid until `expiry_s` (Unix seconds).
pub fn turn_credentials(secret: &str, peer: &PeerId, expiry_s: u64) -> (String, String) {
    let username = format!("{expiry_s}:{peer}");
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(username.as_bytes());
    let credential = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, credential)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_known_coturn_credential() {
        // Computed independently: printf '1700000000:alice' | openssl dgst -sha1 -hmac secret -binary | base64
        let (u, c) = turn_credentials("secret", &"alice".into(), 1_700_000_000);
        assert_eq!(u, "1700000000:alice");
        assert_eq!(c, "d8soP47RbdIKLDUOpnJPVQyq5Ts=");
    }

    #[test]
    fn servers_for_lists_stun_then_turn_with_expiry() {
        let cfg = IceConfig {
            stun: vec!["stun:s:3478".into()],
            turn: vec!["turn:t:3478?transport=udp".into()],
            turn_secret: Some("k".into()),
            turn_ttl_s: 60,
        };
        let s = cfg.servers_for(&"p".into(), 1000);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].urls, vec!["stun:s:3478"]);
        assert_eq!(s[0].username, None);
        assert_eq!(s[1].username.as_deref(), Some("1060:p"));
        assert_eq!(s[1].credential, Some(turn_credentials("k", &"p".into(), 1060).1));
        assert!(IceConfig::default().servers_for(&"p".into(), 0).is_empty());
    }
}
