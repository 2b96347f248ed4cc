//! TLS for c2s: the server certificate (configured, or self-signed and generated on first
//! start) and the channel-binding data SCRAM-*-PLUS needs from each connection.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use proto::sasl::ChannelBinding;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::Settings;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0} holds no certificate")]
    NoCertificate(PathBuf),
    #[error("{0} holds no private key")]
    NoKey(PathBuf),
    #[error("writing the generated certificate to {0}: {1}")]
    Write(PathBuf, std::io::Error),
    #[error("generating a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The acceptor plus what every connection's channel binding needs.
#[derive(Clone)]
pub struct TlsContext {
    pub acceptor: TlsAcceptor,
    /// RFC 5929 tls-server-end-point data of our leaf certificate.
    server_end_point: Vec<u8>,
}

/// The node's certificate chain and key (configured, or self-signed and generated on first
/// start); c2s and s2s present the same one.
pub fn certificate(
    settings: &Settings,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let (cert_path, key_path) = match (&settings.tls.cert, &settings.tls.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => ensure_self_signed(&settings.data_dir.join("tls"), &settings.domains)?,
    };
    Ok((read_certs(&cert_path)?, read_key(&key_path)?))
}

impl TlsContext {
    pub fn load(settings: &Settings) -> Result<TlsContext, TlsError> {
        let (certs, key) = certificate(settings)?;
        let server_end_point = certs
            .first()
            .map(|c| ChannelBinding::server_end_point(c.as_ref()))
            .unwrap_or_default();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        Ok(TlsContext {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            server_end_point,
        })
    }

    /// Channel-binding data for an established connection (RFC 9266 tls-exporter, RFC 5929
    /// tls-server-end-point). Empty on TLS 1.2: clients there bind with tls-unique, which
    /// rustls cannot provide, and most do not read XEP-0440 to pick another type, so
    /// offering -PLUS would make them fail rather than fall back to plain SCRAM.
    pub fn channel_binding<IO>(&self, tls: &TlsStream<IO>) -> ChannelBinding {
        let conn = tls.get_ref().1;
        if conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
            return ChannelBinding::default();
        }
        let mut exporter = [0u8; 32];
        let tls_exporter = conn
            .export_keying_material(&mut exporter, b"EXPORTER-Channel-Binding", None)
            .is_ok()
            .then(|| exporter.to_vec());
        ChannelBinding {
            tls_exporter,
            tls_server_end_point: Some(self.server_end_point.clone()),
        }
    }
}

/// Generate `cert.pem`/`key.pem` for `domains` in `dir` unless they exist already.
fn ensure_self_signed(dir: &Path, domains: &[String]) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    std::fs::create_dir_all(dir).map_err(|e| TlsError::Write(dir.to_path_buf(), e))?;
    let certified = rcgen::generate_simple_self_signed(domains.to_vec())?;
    write_private(&key_path, certified.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(&cert_path, certified.cert.pem())
        .map_err(|e| TlsError::Write(cert_path.clone(), e))?;
    tracing::info!(cert = %cert_path.display(), "generated a self-signed certificate");
    Ok((cert_path, key_path))
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts
        .open(path)
        .map_err(|e| TlsError::Write(path.to_path_buf(), e))?;
    f.write_all(data)
        .map_err(|e| TlsError::Write(path.to_path_buf(), e))
}

pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let f = std::fs::File::open(path).map_err(|e| TlsError::Read(path.to_path_buf(), e))?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(f))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Read(path.to_path_buf(), e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_path_buf()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let f = std::fs::File::open(path).map_err(|e| TlsError::Read(path.to_path_buf(), e))?;
    rustls_pemfile::private_key(&mut BufReader::new(f))
        .map_err(|e| TlsError::Read(path.to_path_buf(), e))?
        .ok_or_else(|| TlsError::NoKey(path.to_path_buf()))
}
