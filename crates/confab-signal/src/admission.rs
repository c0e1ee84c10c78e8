//! Who may open a WebSocket at all, decided before the upgrade: a web page only if its
//! origin is allowed; from another machine only with the access code, when the server has
//! one. Plain functions of what the request carried, so every case is tested without sockets.

use hyper::StatusCode;

use crate::metrics::Rejection;
use crate::server::Config;

/// Whether this client may open a WebSocket at all: a web page only if its origin is
/// allowed; from another machine only with the access code, when there is one. The
/// refusal's text is what the client shows its user.
pub fn admission(
    cfg: &Config,
    origin: Option<&str>,
    query: Option<&str>,
    peer: std::net::IpAddr,
) -> Result<(), (Rejection, StatusCode, String)> {
    if let Some(origin) = origin {
        if !origin_allowed(&cfg.allow_origins, origin) {
            return Err((
                Rejection::Origin,
                StatusCode::FORBIDDEN,
                format!("web pages from {origin} may not connect to this server (its operator can allow them with --allow-origin)\n"),
            ));
        }
    }
    if let Some(code) = &cfg.access_code {
        if !peer.to_canonical().is_loopback() {
            return match query_param(query.unwrap_or(""), "code") {
                None => Err((
                    Rejection::AccessCode,
                    StatusCode::UNAUTHORIZED,
                    "this server needs an access code: join with the invite link its host gave you\n".into(),
                )),
                Some(given) if !same_secret(given.as_bytes(), code.as_bytes()) => Err((
                    Rejection::AccessCode,
                    StatusCode::FORBIDDEN,
                    "wrong access code: ask the host for a new invite link\n".into(),
                )),
                Some(_) => Ok(()),
            };
        }
    }
    Ok(())
}

/// `Origin` matching as browsers send it (`scheme://host[:port]`), ignoring case.
fn origin_allowed(allowed: &[String], origin: &str) -> bool {
    allowed.iter().any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v)
}

/// Compares without an early exit, so the time taken does not tell how much of a guess was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    const LAN: &str = "192.168.1.7";

    fn cfg(origins: &[&str], code: Option<&str>) -> Config {
        Config {
            allow_origins: origins.iter().map(|s| s.to_string()).collect(),
            access_code: code.map(String::from),
            ..Config::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn apps_send_no_origin_and_are_let_in() {
        assert!(admission(&cfg(&[], None), None, None, ip("127.0.0.1")).is_ok());
        assert!(admission(&cfg(&[], None), None, None, ip(LAN)).is_ok());
    }

    #[test]
    fn web_pages_are_refused_unless_their_origin_is_allowed() {
        let (why, status, text) =
            admission(&cfg(&[], None), Some("https://evil.example"), None, ip("127.0.0.1")).unwrap_err();
        assert_eq!((why, status), (Rejection::Origin, StatusCode::FORBIDDEN));
        assert!(text.contains("https://evil.example") && text.contains("--allow-origin"), "{text}");
        let allowed = cfg(&["https://meet.example.org/"], None);
        assert!(admission(&allowed, Some("https://MEET.example.org"), None, ip(LAN)).is_ok());
        assert!(admission(&allowed, Some("https://meet.example.org.evil"), None, ip(LAN)).is_err());
        assert!(admission(&allowed, Some("null"), None, ip(LAN)).is_err());
        assert!(admission(&cfg(&["*"], None), Some("http://anything:1"), None, ip(LAN)).is_ok());
    }

    #[test]
    fn another_machine_needs_the_access_code() {
        let c = cfg(&[], Some("K7F2-9QX4"));
        let (why, status, text) = admission(&c, None, None, ip(LAN)).unwrap_err();
        assert_eq!((why, status), (Rejection::AccessCode, StatusCode::UNAUTHORIZED));
        assert!(text.contains("access code"), "{text}");
        let (_, status, text) = admission(&c, None, Some("code=K7F2-9QX5"), ip(LAN)).unwrap_err();
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(text.contains("wrong access code"), "{text}");
        assert!(admission(&c, None, Some("x=1&code=K7F2-9QX4"), ip(LAN)).is_ok());
        assert!(admission(&c, None, Some("code=K7F2"), ip(LAN)).is_err(), "a prefix is not the code");
        // This machine's own apps (loopback, IPv4 or IPv6, or IPv4 mapped) need none.
        for me in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            assert!(admission(&c, None, None, ip(me)).is_ok(), "{me}");
        }
        // A web page on this machine is still a web page.
        assert!(admission(&c, Some("http://localhost:3000"), None, ip("127.0.0.1")).is_err());
    }
}
