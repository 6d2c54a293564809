//! Mutual TLS for the peer transport: loading the cluster CA and a node's key pair, and
//! deciding which node a presented certificate belongs to.
//!
//! A node certificate names the node as `node-<id>.corral`. Both sides verify the chain to the
//! cluster CA; the accepting side then maps the client certificate to a node id of the cluster
//! file and refuses anything else.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {message}")]
    Pem { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The DNS name a node's certificate carries and peers verify.
pub fn node_dns_name(id: u64) -> String {
    format!("node-{id}.corral")
}

/// Installs ring as the process-wide rustls provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[derive(Clone)]
pub struct TlsMaterial {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
}

fn pem_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_err(path, e))?;
    if certs.is_empty() {
        return Err(pem_err(path, "no certificate found"));
    }
    Ok(certs)
}

/// Loads the CA, this node's certificate and key, and builds both TLS configurations.
pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<TlsMaterial, TlsError> {
    install_crypto_provider();
    let mut roots = RootCertStore::empty();
    for c in load_certs(ca)? {
        roots.add(c).map_err(|e| pem_err(ca, e))?;
    }
    let roots = Arc::new(roots);
    let chain = load_certs(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(key, e))?;
    let verifier = WebPkiClientVerifier::builder(roots.clone())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let server = ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key_der.clone_key())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let client = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key_der)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(TlsMaterial {
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

/// Which of `ids` the (already chain-verified) certificate names, if any.
pub fn identify(cert: &CertificateDer<'_>, ids: &[u64]) -> Option<u64> {
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    ids.iter().copied().find(|id| {
        ServerName::try_from(node_dns_name(*id))
            .map(|name| ee.verify_is_valid_for_subject_name(&name).is_ok())
            .unwrap_or(false)
    })
}
