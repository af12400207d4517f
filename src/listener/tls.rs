//! TLS termination: PEM files -> a rustls `ServerConfig` (TLS 1.2 and 1.3, ALPN `h2` and
//! `http/1.1`, optional client-certificate verification), with a certificate store whose pair
//! can be replaced at run time (SIGHUP) without touching established connections.
//!
//! The crypto provider is *ring*: it builds with a C compiler alone, where aws-lc-rs also needs
//! cmake, which a fresh Debian machine does not have.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;

/// A TLS file problem, naming the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read the file: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid PEM file: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("{path}: no certificate found (expected PEM \"BEGIN CERTIFICATE\" blocks)")]
    NoCertificate { path: PathBuf },
    #[error("{path}: certificate #{index} in the file cannot be parsed: {reason}")]
    BadCertificate {
        path: PathBuf,
        index: usize,
        reason: String,
    },
    #[error("{path}: certificate #{index} ({subject}) expired on {not_after}")]
    Expired {
        path: PathBuf,
        index: usize,
        subject: String,
        not_after: String,
    },
    #[error("{path}: certificate #{index} ({subject}) is not valid before {not_before}")]
    NotYetValid {
        path: PathBuf,
        index: usize,
        subject: String,
        not_before: String,
    },
    #[error("{path}: no private key found (expected PEM PKCS#8, RSA or EC private key)")]
    NoKey { path: PathBuf },
    #[error("{path}: unsupported private key: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("{key}: the private key does not match the certificate in {cert}")]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("{path}: cannot use these CA certificates for client verification: {reason}")]
    ClientCa { path: PathBuf, reason: String },
    #[error("TLS setup failed: {0}")]
    Setup(String),
}

/// The certificate a listener presents, swappable at run time. Read once per handshake.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A poisoned lock still holds a valid pair: the writer only ever swaps whole Arcs.
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        Some(Arc::clone(&current))
    }
}

/// A TLS listener's acceptor, plus what it needs to reload its certificate.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: TlsAcceptor,
    store: Arc<CertStore>,
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

impl Tls {
    /// Loads and checks every file; nothing is served from a pair that fails a check.
    pub fn load(files: &TlsFiles) -> Result<Tls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = load_pair(files, &provider)?;
        let store = Arc::new(CertStore {
            current: RwLock::new(Arc::new(key)),
        });
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Setup(e.to_string()))?;
        let builder = match &files.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certs(path)? {
                    roots.add(cert).map_err(|e| TlsError::ClientCa {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    Arc::clone(&provider),
                )
                .build()
                .map_err(|e| TlsError::ClientCa {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config =
            builder.with_cert_resolver(Arc::clone(&store) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            store,
            files: files.clone(),
            provider,
        })
    }

    /// Re-reads the certificate and key. New handshakes use the new pair; established connections
    /// keep theirs. On any error the current pair stays in service.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = load_pair(&self.files, &self.provider)?;
        let mut current = self
            .store
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner());
        *current = Arc::new(key);
        Ok(())
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Malformed {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Loads cert chain and key, and checks that every certificate parses and is valid now and that
/// the key matches the leaf.
fn load_pair(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = read_certs(&files.cert)?;
    check_validity(&files.cert, &chain)?;
    let key_pem = read(&files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: files.key.clone(),
        },
        e => TlsError::Malformed {
            path: files.key.clone(),
            reason: e.to_string(),
        },
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::Mismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
        },
        e => TlsError::BadKey {
            path: files.key.clone(),
            reason: e.to_string(),
        },
    })
}

fn check_validity(path: &Path, chain: &[CertificateDer<'_>]) -> Result<(), TlsError> {
    let now = x509_parser::time::ASN1Time::now();
    for (i, der) in chain.iter().enumerate() {
        let index = i + 1;
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::BadCertificate {
                path: path.to_path_buf(),
                index,
                reason: e.to_string(),
            })?;
        let validity = cert.validity();
        let subject = cert.subject().to_string();
        if now > validity.not_after {
            return Err(TlsError::Expired {
                path: path.to_path_buf(),
                index,
                subject,
                not_after: validity.not_after.to_string(),
            });
        }
        if now < validity.not_before {
            return Err(TlsError::NotYetValid {
                path: path.to_path_buf(),
                index,
                subject,
                not_before: validity.not_before.to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certs(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/certs")
            .join(name)
    }

    fn files(cert: &str, key: &str) -> TlsFiles {
        TlsFiles {
            cert: certs(cert),
            key: certs(key),
            client_ca: None,
        }
    }

    fn err(f: TlsFiles) -> String {
        Tls::load(&f).map(|_| ()).unwrap_err().to_string()
    }

    #[test]
    fn loads_pkcs8_rsa_and_ec_keys_with_chains() {
        for (cert, key) in [
            ("chain.pem", "server.key"),
            ("rsa-chain.pem", "rsa.key"),
            ("ec-chain.pem", "ec.key"),
        ] {
            Tls::load(&files(cert, key)).unwrap_or_else(|e| panic!("{cert}/{key}: {e}"));
        }
        let mut f = files("chain.pem", "server.key");
        f.client_ca = Some(certs("client-ca.pem"));
        Tls::load(&f).unwrap();
    }

    #[test]
    fn each_bad_file_is_named_with_its_problem() {
        let missing = err(files("nope.pem", "server.key"));
        assert!(
            missing.contains("nope.pem: cannot read the file"),
            "{missing}"
        );

        let mismatch = err(files("chain.pem", "rsa.key"));
        assert!(
            mismatch.contains("rsa.key: the private key does not match the certificate in"),
            "{mismatch}"
        );

        let expired = err(files("expired-chain.pem", "expired.key"));
        assert!(
            expired.contains("expired-chain.pem: certificate #1 (CN=expired) expired on"),
            "{expired}"
        );

        let no_key = err(files("chain.pem", "chain.pem"));
        assert!(
            no_key.contains("chain.pem: no private key found"),
            "{no_key}"
        );

        let no_cert = err(files("server.key", "server.key"));
        assert!(
            no_cert.contains("server.key: no certificate found"),
            "{no_cert}"
        );

        let dir = std::env::temp_dir().join(format!("weir-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let malformed = err(TlsFiles {
            cert: garbage.clone(),
            key: certs("server.key"),
            client_ca: None,
        });
        assert!(
            malformed.contains("garbage.pem: not a valid PEM file"),
            "{malformed}"
        );
        let truncated = dir.join("truncated.pem");
        std::fs::write(
            &truncated,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let bad = err(TlsFiles {
            cert: truncated,
            key: certs("server.key"),
            client_ca: None,
        });
        assert!(
            bad.contains("truncated.pem: certificate #1 in the file cannot be parsed"),
            "{bad}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_bad_reload_keeps_the_old_pair() {
        let dir = std::env::temp_dir().join(format!("weir-tls-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
        std::fs::copy(certs("chain.pem"), &cert).unwrap();
        std::fs::copy(certs("server.key"), &key).unwrap();
        let tls = Tls::load(&TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: None,
        })
        .unwrap();
        let before = tls.store.current.read().unwrap().cert[0].clone();
        std::fs::copy(certs("rsa.key"), &key).unwrap(); // mismatched
        assert!(matches!(tls.reload(), Err(TlsError::Mismatch { .. })));
        assert_eq!(tls.store.current.read().unwrap().cert[0], before);
        std::fs::copy(certs("rotated-chain.pem"), &cert).unwrap();
        std::fs::copy(certs("rotated.key"), &key).unwrap();
        tls.reload().unwrap();
        assert_ne!(tls.store.current.read().unwrap().cert[0], before);
        std::fs::remove_dir_all(&dir).ok();
    }
}
