//! TLS for `segments serve`, over the PostgreSQL protocol and HTTP alike:
//! a certificate chain and its private key, read from PEM files (rustls,
//! with the ring provider pgwire already uses).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion_postgres::pgwire::tokio::tokio_rustls::TlsAcceptor;
use datafusion_postgres::pgwire::tokio::tokio_rustls::rustls::ServerConfig;
use datafusion_postgres::pgwire::tokio::tokio_rustls::rustls::crypto::ring;
use datafusion_postgres::pgwire::tokio::tokio_rustls::rustls::pki_types::pem::PemObject;
use datafusion_postgres::pgwire::tokio::tokio_rustls::rustls::pki_types::{
    CertificateDer, PrivateKeyDer,
};

use crate::error::{Error, Result};

/// The PEM files of a server's certificate.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain, the server's first.
    pub cert: PathBuf,
    /// Its private key (PKCS #8, PKCS #1 or SEC1).
    pub key: PathBuf,
}

impl TlsFiles {
    /// An acceptor of TLS connections offering `alpn` (e.g. `http/1.1`).
    pub fn acceptor(&self, alpn: &[&[u8]]) -> Result<TlsAcceptor> {
        let bad = |path: &Path, what: String| Error::usage(format!("{}: {what}", path.display()));
        let certs = CertificateDer::pem_file_iter(&self.cert)
            .map_err(|e| bad(&self.cert, format!("cannot read a certificate: {e}")))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| bad(&self.cert, format!("not a PEM certificate: {e}")))?;
        if certs.is_empty() {
            return Err(bad(&self.cert, "holds no certificate".into()));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| bad(&self.key, format!("no private key: {e}")))?;
        let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::usage(format!("TLS: {e}")))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| {
                bad(
                    &self.key,
                    format!("does not match {}: {e}", self.cert.display()),
                )
            })?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}
