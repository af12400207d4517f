//! TLS to an upstream (`tls = true | { ca, server_name, cert, key }`): a rustls client on the
//! ring provider, verifying the backend's certificate against the given CA or Mozilla's roots,
//! with weir's client certificate for mTLS, and ALPN per the upstream's protocol.

use std::path::Path;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::TlsConnector;

use crate::config::{Config, Protocol, UpstreamAddr, UpstreamTls};

/// Why an upstream's TLS settings cannot be used, naming the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("TLS setup failed: {0}")]
    Setup(String),
    #[error("{0:?} is not a name a certificate can be checked against")]
    ServerName(String),
}

/// What connecting with TLS to one upstream needs: the connector and the name its certificate
/// must carry.
#[derive(Clone)]
pub(crate) struct Handshake {
    pub(crate) connector: TlsConnector,
    pub(crate) server_name: ServerName<'static>,
}

impl Handshake {
    /// Loads `tls`'s files for an upstream at `addr` speaking `protocol`.
    pub(crate) fn load(
        tls: &UpstreamTls,
        addr: &UpstreamAddr,
        protocol: Protocol,
    ) -> Result<Handshake, UpstreamTlsError> {
        let mut roots = RootCertStore::empty();
        match &tls.ca {
            Some(ca) => {
                for cert in read_certs(ca)? {
                    roots.add(cert).map_err(|e| file_error(ca, e))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| UpstreamTlsError::Setup(e.to_string()))?
            .with_root_certificates(roots);
        let mut config = match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert)?;
                let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e))?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| file_error(key, e))?
            }
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![match protocol {
            Protocol::Http1 => b"http/1.1".to_vec(),
            Protocol::H2c => b"h2".to_vec(),
        }];
        let name = match (&tls.server_name, addr) {
            (Some(name), _) => name.clone(),
            (None, UpstreamAddr::Tcp(a)) => a
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            (None, UpstreamAddr::Unix(_)) => "localhost".to_string(),
        };
        let server_name =
            ServerName::try_from(name.clone()).map_err(|_| UpstreamTlsError::ServerName(name))?;
        Ok(Handshake {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }
}

/// Loads the TLS settings of every upstream of `config` that has some, so that a bad file stops
/// a start or a reload before anything uses it: each problem, with the upstream's name.
pub fn check_upstream_tls(config: &Config) -> Result<(), Vec<(String, UpstreamTlsError)>> {
    let problems: Vec<_> = config
        .upstreams
        .iter()
        .filter_map(|u| {
            let tls = u.tls.as_ref()?;
            Handshake::load(tls, &u.addr, u.protocol)
                .err()
                .map(|e| (u.name.clone(), e))
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, UpstreamTlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(
            path,
            "no certificate found (expected PEM \"BEGIN CERTIFICATE\" blocks)",
        ));
    }
    Ok(certs)
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> UpstreamTlsError {
    UpstreamTlsError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}
