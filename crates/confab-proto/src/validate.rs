//! Field limits for client messages. Kept apart from the types so that every rule sits in
//! one place and reads as a list.

use crate::limits::*;
use crate::{ClientMsg, ErrorCode, ProtoError, SignalData};

/// Checks every field of a decoded client message against [`crate::limits`].
pub fn validate(msg: &ClientMsg) -> Result<(), ProtoError> {
    match msg {
        ClientMsg::Join { room, name, password, resume } => {
            text("room", room, MAX_ROOM_NAME_CHARS)?;
            if let Some(r) = resume {
                // A resumed id is echoed to the whole room, so it must look like one we made.
                let id_ok = |s: &str, max: usize| {
                    !s.is_empty()
                        && s.len() <= max
                        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                };
                if !id_ok(r.peer_id.as_str(), MAX_PEER_ID_BYTES) || !id_ok(&r.token, MAX_TOKEN_BYTES) {
                    return Err(bad(format!(
                        "resume needs the peer_id and token from `joined` (1 to {MAX_PEER_ID_BYTES} characters of A-Z a-z 0-9 - _)"
                    )));
                }
            }
            text("name", name, MAX_DISPLAY_NAME_CHARS)?;
            if let Some(p) = password {
                if p.is_empty() {
                    return Err(bad("password must not be empty (omit it or send null)"));
                }
                chars("password", p, MAX_PASSWORD_CHARS)?;
            }
        }
        ClientMsg::Signal { to, data } => {
            if to.0.is_empty() || to.0.len() > MAX_PEER_ID_BYTES {
                return Err(bad(format!("`to` must be a peer id of 1 to {MAX_PEER_ID_BYTES} bytes")));
            }
            match data {
                SignalData::Sdp(d) => bytes("sdp", &d.sdp, MAX_SDP_BYTES)?,
                SignalData::Candidate(Some(c)) => {
                    bytes("candidate", &c.candidate, MAX_CANDIDATE_BYTES)?;
                    if let Some(mid) = &c.sdp_mid {
                        bytes("sdpMid", mid, MAX_ICE_FIELD_BYTES)?;
                    }
                    if let Some(u) = &c.username_fragment {
                        bytes("usernameFragment", u, MAX_ICE_FIELD_BYTES)?;
                    }
                }
                SignalData::Candidate(None) => {}
            }
        }
        ClientMsg::Chat { text: t } => {
            if t.trim().is_empty() {
                return Err(bad("chat text must not be empty"));
            }
            chars("chat text", t, MAX_CHAT_CHARS)?;
        }
        ClientMsg::State { .. } | ClientMsg::Leave => {}
    }
    Ok(())
}

/// A name people read: not blank, no control characters, at most `max` characters.
fn text(field: &str, value: &str, max: usize) -> Result<(), ProtoError> {
    if value.trim().is_empty() {
        return Err(bad(format!("{field} must not be empty")));
    }
    chars(field, value, max)?;
    if value.chars().any(char::is_control) {
        return Err(bad(format!("{field} must not contain control characters")));
    }
    Ok(())
}

fn chars(field: &str, value: &str, max: usize) -> Result<(), ProtoError> {
    // Counting chars is O(n), so refuse absurd byte lengths before counting.
    if value.len() > max * 4 || value.chars().count() > max {
        return Err(bad(format!("{field} is longer than {max} characters")));
    }
    Ok(())
}

fn bytes(field: &str, value: &str, max: usize) -> Result<(), ProtoError> {
    if value.len() > max {
        return Err(ProtoError::new(
            ErrorCode::TooLarge,
            format!("{field} of {} bytes is over the limit of {max} bytes", value.len()),
        ));
    }
    Ok(())
}

fn bad(message: impl Into<String>) -> ProtoError {
    ProtoError::new(ErrorCode::BadRequest, message)
}
