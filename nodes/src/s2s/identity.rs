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

/// Our domains that our own certificate (`chain`, leaf first) does not name (RFC 6125
/// DNS-IDs, as peers check them): peers verifying certificates cannot authenticate links
/// of those domains with SASL EXTERNAL (XEP-0178), and those that accept nothing else
/// (Prosody's `s2s_secure_auth`, ejabberd's `s2s_use_starttls: required_trusted`) refuse
/// them. A group chat service's `conference.<domain>` is the usual one an operator's
/// certificate leaves out.
pub fn unnamed_domains<'d>(
    chain: &[CertificateDer<'static>],
    domains: impl IntoIterator<Item = &'d String>,
) -> Vec<&'d str> {
    let leaf = chain
        .first()
        .and_then(|c| webpki::EndEntityCert::try_from(c).ok());
    domains
        .into_iter()
        .map(String::as_str)
        .filter(|d| {
            let Some(leaf) = &leaf else {
                return true;
            };
            ServerName::try_from(*d).map_or(true, |name| {
                leaf.verify_is_valid_for_subject_name(&name).is_err()
            })
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(names: &[&str]) -> Vec<CertificateDer<'static>> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let certified = rcgen::generate_simple_self_signed(names).expect("test certificate");
        vec![certified.cert.der().clone()]
    }

    fn domains(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_certificate_for_the_served_domain_only_leaves_out_the_service() {
        let ours = domains(&["example.org", "conference.example.org"]);
        assert_eq!(
            unnamed_domains(&chain(&["example.org"]), &ours),
            vec!["conference.example.org"]
        );
        assert!(
            unnamed_domains(&chain(&["example.org", "conference.example.org"]), &ours).is_empty()
        );
    }

    #[test]
    fn a_wildcard_names_the_service_but_not_the_domain_itself() {
        // RFC 6125 §6.4.3: `*` stands for the leftmost label only.
        let ours = domains(&["example.org", "conference.example.org"]);
        assert_eq!(
            unnamed_domains(&chain(&["*.example.org"]), &ours),
            vec!["example.org"]
        );
    }

    #[test]
    fn no_usable_certificate_names_nothing() {
        let ours = domains(&["example.org"]);
        assert_eq!(unnamed_domains(&[], &ours), vec!["example.org"]);
        let garbage = vec![CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00])];
        assert_eq!(unnamed_domains(&garbage, &ours), vec!["example.org"]);
    }
}
