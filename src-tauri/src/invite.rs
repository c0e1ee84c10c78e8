//! Invite links: `confab://join?server=...&room=...` opens confab on the join screen of that
//! room on that server, filled in, one click (or Enter) from joining. The server URL
//! carries the access code of a host's built-in server (`?code=`); the room password is in
//! a link only when the person inviting asked for it.

use url::Url;

/// The scheme confab registers with the desktop (`x-scheme-handler/confab`).
pub const SCHEME: &str = "confab";

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Invite {
    /// ws:// or wss:// URL of the signaling server, as the invited person reaches it.
    pub server: String,
    pub room: String,
    pub password: Option<String>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum InviteError {
    #[error("'{0}' is not a confab invite link (they start with confab://join?)")]
    NotAnInvite(String),
    #[error("the invite link has no {0}")]
    Missing(&'static str),
    #[error("the invite link's server '{0}' is not a ws:// or wss:// address")]
    BadServer(String),
}

impl Invite {
    /// The link to give others.
    pub fn link(&self) -> String {
        let mut u = Url::parse(&format!("{SCHEME}://join")).expect("a valid base URL");
        {
            let mut q = u.query_pairs_mut();
            q.append_pair("room", &self.room).append_pair("server", &self.server);
            if let Some(p) = &self.password {
                q.append_pair("password", p);
            }
        }
        u.into()
    }

    /// Reads a link as the desktop hands it over (a command-line argument).
    pub fn parse(link: &str) -> Result<Invite, InviteError> {
        let not = || InviteError::NotAnInvite(shorten(link));
        let u = Url::parse(link.trim()).map_err(|_| not())?;
        if u.scheme() != SCHEME || u.host_str() != Some("join") {
            return Err(not());
        }
        let get = |name: &str| {
            u.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.trim().to_string()).filter(|v| !v.is_empty())
        };
        let room = get("room").ok_or(InviteError::Missing("room"))?;
        let server = get("server").ok_or(InviteError::Missing("server"))?;
        if !(server.starts_with("ws://") || server.starts_with("wss://")) || Url::parse(&server).is_err() {
            return Err(InviteError::BadServer(shorten(&server)));
        }
        Ok(Invite { server, room, password: get("password") })
    }

    /// Whether a command-line argument is meant as a link (rather than a mistyped flag).
    pub fn looks_like_link(arg: &str) -> bool {
        arg.trim_start().to_ascii_lowercase().starts_with(&format!("{SCHEME}:"))
    }
}

/// Error messages quote what they were given, but never a whole pasted essay.
fn shorten(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(MAX).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite(password: Option<&str>) -> Invite {
        Invite {
            server: "ws://192.168.1.20:8787/ws?code=K7F2-9QX4".into(),
            room: "stand up & coffee".into(),
            password: password.map(String::from),
        }
    }

    #[test]
    fn a_link_reads_back_as_what_it_was_made_from() {
        for inv in [invite(None), invite(Some("s3cret =&?"))] {
            let link = inv.link();
            assert!(link.starts_with("confab://join?"), "{link}");
            assert_eq!(Invite::parse(&link), Ok(inv));
        }
    }

    #[test]
    fn the_password_is_only_there_when_asked_for() {
        assert!(!invite(None).link().contains("password"));
        assert!(invite(Some("pw")).link().contains("password=pw"));
    }

    #[test]
    fn the_access_code_travels_inside_the_server_address() {
        let back = Invite::parse(&invite(None).link()).unwrap();
        assert_eq!(back.server, "ws://192.168.1.20:8787/ws?code=K7F2-9QX4");
    }

    #[test]
    fn bad_links_say_what_is_wrong() {
        assert!(matches!(Invite::parse("https://example.org/join?room=a"), Err(InviteError::NotAnInvite(_))));
        assert!(matches!(Invite::parse("confab://leave?room=a"), Err(InviteError::NotAnInvite(_))));
        assert!(matches!(Invite::parse("not a url at all"), Err(InviteError::NotAnInvite(_))));
        assert_eq!(Invite::parse("confab://join?server=ws%3A%2F%2Fh%2Fws"), Err(InviteError::Missing("room")));
        assert_eq!(Invite::parse("confab://join?room=a&room=b"), Err(InviteError::Missing("server")));
        assert!(matches!(
            Invite::parse("confab://join?room=a&server=http%3A%2F%2Fh%2F"),
            Err(InviteError::BadServer(_))
        ));
        let long = format!("confab://nope/{}", "x".repeat(500));
        let InviteError::NotAnInvite(quoted) = Invite::parse(&long).unwrap_err() else { panic!() };
        assert!(quoted.chars().count() <= 81);
    }

    #[test]
    fn links_are_told_from_flags() {
        assert!(Invite::looks_like_link("confab://join?room=a"));
        assert!(Invite::looks_like_link("CONFAB:join"));
        assert!(!Invite::looks_like_link("--room"));
    }
}
