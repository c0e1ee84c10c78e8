//! TLS for `wss://`: certificates from PEM files, or a self-signed one generated at start
//! for localhost/127.0.0.1/::1 that clients can pin by file or SHA-256 fingerprint.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} from {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("no certificate found in {0} (expected PEM 'BEGIN CERTIFICATE')")]
    NoCert(PathBuf),
    #[error("no private key found in {0} (expected PEM PKCS#8, PKCS#1 or SEC1)")]
    NoKey(PathBuf),
    #[error("certificate and key do not make a TLS config: {0}")]
    Config(#[from] rustls::Error),
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A certificate and key ready to serve, with what a client needs to trust it.
pub struct Identity {
    pub config: Arc<rustls::ServerConfig>,
    /// The leaf certificate as PEM (what `--write-cert` writes).
    pub cert_pem: String,
    /// SHA-256 of the leaf certificate's DER, as colon-separated upper-case hex.
    pub fingerprint: String,
}

/// Loads a certificate chain and private key from PEM files.
pub fn load(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
    let cert_pem = std::fs::read_to_string(cert).map_err(|source| TlsError::Read {
        what: "certificate",
        path: cert.into(),
        source,
    })?;
    let key_pem =
        std::fs::read(key).map_err(|source| TlsError::Read { what: "private key", path: key.into(), source })?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Read { what: "certificate", path: cert.into(), source })?;
    let first = chain.first().cloned().ok_or_else(|| TlsError::NoCert(cert.into()))?;
    let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|source| TlsError::Read { what: "private key", path: key.into(), source })?
        .ok_or_else(|| TlsError::NoKey(key.into()))?;
    Ok(Identity { config: server_config(chain, key_der)?, fingerprint: fingerprint(&first), cert_pem })
}

/// Generates a certificate for `localhost`, `127.0.0.1` and `::1` plus any `extra_names`.
pub fn self_signed(extra_names: &[String]) -> Result<Identity, TlsError> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    names.extend(extra_names.iter().cloned());
    let certified = rcgen::generate_simple_self_signed(names)?;
    let der = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    Ok(Identity {
        cert_pem: certified.cert.pem(),
        fingerprint: fingerprint(&der),
        config: server_config(vec![der], key)?,
    })
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// SHA-256 of a DER certificate as `AB:CD:...`, the form browsers and `openssl x509
/// -fingerprint -sha256` show.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_round_trips_through_pem_files() {
        let id = self_signed(&[]).unwrap();
        assert_eq!(id.fingerprint.len(), 32 * 3 - 1);
        let dir = std::env::temp_dir().join(format!("confab-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (c, k) = (dir.join("c.pem"), dir.join("k.pem"));
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&c, generated.cert.pem()).unwrap();
        std::fs::write(&k, generated.signing_key.serialize_pem()).unwrap();
        let loaded = load(&c, &k).unwrap();
        assert_eq!(loaded.fingerprint, fingerprint(generated.cert.der()));
        // A key file that holds no key is a clear error, not a panic.
        std::fs::write(&k, "nothing here").unwrap();
        assert!(matches!(load(&c, &k), Err(TlsError::NoKey(_))));
        assert!(matches!(load(&dir.join("missing.pem"), &k), Err(TlsError::Read { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
