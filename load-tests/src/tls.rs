//! rustls client configuration: trust a PEM file, or (`--insecure`, loopback only) any
//! certificate while still checking the handshake signatures.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::Resumption;
use tokio_rustls::rustls::crypto::WebPkiSupportedAlgorithms;
use tokio_rustls::rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    ClientConfig, DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme,
};

/// Which server certificates to accept.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Certificates from this PEM file are the trust anchors.
    Roots(std::path::PathBuf),
    /// Any certificate (the target is always loopback).
    AnyCertificate,
}

/// A client configuration; `direct` adds the `xmpp-client` ALPN of XEP-0368. Session
/// resumption is off: every simulated client does a full handshake, like a first login.
pub fn client_config(trust: &Trust, direct: bool) -> anyhow::Result<Arc<ClientConfig>> {
    let provider = Arc::new(ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let mut config = match trust {
        Trust::AnyCertificate => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate {
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth(),
        Trust::Roots(path) => builder
            .with_root_certificates(roots(path)?)
            .with_no_client_auth(),
    };
    config.resumption = Resumption::disabled();
    if direct {
        config.alpn_protocols = vec![b"xmpp-client".to_vec()];
    }
    Ok(Arc::new(config))
}

fn roots(path: &Path) -> anyhow::Result<RootCertStore> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.with_context(|| format!("parsing {}", path.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("certificate in {}", path.display()))?;
    }
    anyhow::ensure!(
        !roots.is_empty(),
        "no certificate found in {}",
        path.display()
    );
    Ok(roots)
}

/// Accepts any certificate chain, but verifies that the server signed the handshake with the
/// certificate's key.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_build() {
        let any = client_config(&Trust::AnyCertificate, true).unwrap();
        assert_eq!(any.alpn_protocols, [b"xmpp-client".to_vec()]);
        let starttls = client_config(&Trust::AnyCertificate, false).unwrap();
        assert!(starttls.alpn_protocols.is_empty());
    }

    #[test]
    fn missing_or_empty_ca_file_is_an_error() {
        assert!(client_config(&Trust::Roots("/nonexistent.pem".into()), false).is_err());
        let dir = std::env::temp_dir().join(format!("lg-ca-{}", std::process::id()));
        std::fs::write(&dir, "not a pem").unwrap();
        let result = client_config(&Trust::Roots(dir.clone()), false);
        let _ = std::fs::remove_file(&dir);
        assert!(result.is_err());
    }
}
