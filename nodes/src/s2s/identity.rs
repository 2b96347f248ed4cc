//! Peer certificates on s2s streams. The TLS handshakes accept any certificate (a peer we
//! cannot verify may still authenticate with dialback); afterwards the chain is checked
//! against the configured CA bundle and the domain against the certificate's names (RFC 6125
//! DNS-IDs, wildcards in the leftmost label, as webpki implements them). Only then does a
//! peer qualify for SASL EXTERNAL (XEP-0178).

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};

/// The system CA bundle used when `s2s.ca_file` is empty.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Checks peer certificate chains and names.
pub struct Identity {
    verifier: Option<Arc<WebPkiServerVerifier>>,
}

impl Identity {
    /// `ca_file` empty: the system bundle if present, otherwise no certificate verifies.
    pub fn load(ca_file: &str, provider: Arc<CryptoProvider>) -> anyhow::Result<Identity> {
        let path = if ca_file.is_empty() {
            if !Path::new(SYSTEM_BUNDLE).exists() {
                tracing::info!("no s2s CA bundle: peers authenticate with dialback only");
                return Ok(Identity { verifier: None });
            }
            SYSTEM_BUNDLE
        } else {
            ca_file
        };
        let mut roots = RootCertStore::empty();
        let certs = crate::tls::read_certs(Path::new(path))?;
        let (added, ignored) = roots.add_parsable_certificates(certs);
        tracing::info!(ca_file = path, added, ignored, "s2s CA bundle loaded");
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| anyhow::anyhow!("s2s CA bundle {path}: {e}"))?;
        Ok(Identity {
            verifier: Some(verifier),
        })
    }

    /// Whether `chain` (leaf first) chains to a trusted CA and names `domain`.
    pub fn verifies(&self, chain: &[CertificateDer<'static>], domain: &str) -> bool {
        let Some(verifier) = &self.verifier else {
            return false;
        };
        let Some((leaf, intermediates)) = chain.split_first() else {
            return false;
        };
        let Ok(name) = ServerName::try_from(domain.to_string()) else {
            return false;
        };
        match verifier.verify_server_cert(leaf, intermediates, &name, &[], UnixTime::now()) {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(domain, error = %e, "peer certificate does not verify");
                false
            }
        }
    }
}

/// Accepts any server certificate in the handshake (signatures are still checked); the
/// identity is checked afterwards with [`Identity::verifies`].
#[derive(Debug)]
pub struct AnyServerCert(pub Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, tokio_rustls::rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Asks inbound peers for a client certificate (optional) and accepts any; see
/// [`AnyServerCert`].
#[derive(Debug)]
pub struct AnyClientCert(pub Arc<CryptoProvider>);

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, tokio_rustls::rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
