//! TLS for a listener: a certificate and key from PEM files, reloaded when
//! the files change so certificates rotate without a restart, and optional
//! client-certificate authentication against a CA file.
//!
//! Reloading is checked on each new connection: the files' identity
//! (inode, size, modification time) is compared with what was loaded, a
//! `stat` per file rather than a watcher thread, so a rotation takes effect
//! with the very next handshake. A rotation caught half-written (a new
//! certificate, the old key) fails to load; the previous configuration
//! stays in force, the failure is logged once per change, and the next
//! change is tried again. Connections already open keep their session.
//!
//! rustls with the ring provider, chosen explicitly: the dependency tree
//! also carries aws-lc-rs (Momento's SDK), and rustls refuses to guess
//! between two process-wide providers.

use std::{
    fmt, fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::SystemTime,
};

use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio_rustls::TlsAcceptor;

/// Where a listener's TLS material lives (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by one of these
    /// CAs.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// The files of a listener's `--tls-cert`, `--tls-key` and
    /// `--tls-client-ca` flags: `None` when neither certificate nor key is
    /// given (plaintext).
    ///
    /// # Errors
    /// [`TlsError`] when only one of certificate and key is given, or a
    /// client CA without them.
    pub fn from_flags(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        client_ca: Option<PathBuf>,
    ) -> Result<Option<Self>, TlsError> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(Self {
                cert,
                key,
                client_ca,
            })),
            (None, None) if client_ca.is_some() => Err(TlsError(
                "--tls-client-ca needs --tls-cert and --tls-key".into(),
            )),
            (None, None) => Ok(None),
            _ => Err(TlsError("--tls-cert and --tls-key go together".into())),
        }
    }
}

/// Why TLS material could not be used.
#[derive(Debug)]
pub struct TlsError(String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

/// ALPN of a gRPC-only listener.
pub const ALPN_GRPC: &[&str] = &["h2"];
/// ALPN of a listener serving HTTP/2 and HTTP/1.1 (the gateway; gRPC-web).
pub const ALPN_HTTP: &[&str] = &["h2", "http/1.1"];

/// The ring provider every fxcast TLS endpoint uses.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A listener's TLS configuration, reloaded when its files change.
#[derive(Clone)]
pub struct Tls {
    inner: Arc<Inner>,
}

struct Inner {
    files: TlsFiles,
    alpn: Vec<Vec<u8>>,
    current: Mutex<Loaded>,
}

struct Loaded {
    /// The files as they were when last tried (loaded or not).
    stamp: Vec<Stamp>,
    acceptor: TlsAcceptor,
}

/// A file's identity: a rename, a rewrite or a touch changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    len: u64,
    modified: Option<SystemTime>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("files", &self.inner.files)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads `files`, offering `alpn` protocols (`h2`, `http/1.1`) in
    /// that order of preference.
    ///
    /// # Errors
    /// [`TlsError`] naming the file that cannot be read or used, and why.
    pub fn load(files: TlsFiles, alpn: &[&str]) -> Result<Self, TlsError> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let stamp = stamps(&files);
        let acceptor = acceptor(&files, &alpn)?;
        Ok(Self {
            inner: Arc::new(Inner {
                files,
                alpn,
                current: Mutex::new(Loaded { stamp, acceptor }),
            }),
        })
    }

    /// The acceptor for a new connection: the files' current contents, or
    /// the last configuration that loaded if they no longer do.
    pub fn acceptor(&self) -> TlsAcceptor {
        let stamp = stamps(&self.inner.files);
        let mut current = self
            .inner
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if current.stamp != stamp {
            current.stamp = stamp;
            match acceptor(&self.inner.files, &self.inner.alpn) {
                Ok(acceptor) => {
                    current.acceptor = acceptor;
                    tracing::info!(cert = %self.inner.files.cert.display(), "TLS certificate reloaded");
                }
                Err(err) => tracing::warn!(
                    error = %err,
                    "TLS files changed but cannot be used; keeping the previous certificate"
                ),
            }
        }
        current.acceptor.clone()
    }
}

fn stamps(files: &TlsFiles) -> Vec<Stamp> {
    [
        Some(&files.cert),
        Some(&files.key),
        files.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|path| {
        fs::metadata(path).map_or(
            Stamp {
                inode: 0,
                len: 0,
                modified: None,
            },
            |meta| Stamp {
                inode: meta.ino(),
                len: meta.len(),
                modified: meta.modified().ok(),
            },
        )
    })
    .collect()
}

fn acceptor(files: &TlsFiles, alpn: &[Vec<u8>]) -> Result<TlsAcceptor, TlsError> {
    let chain = certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|err| {
        TlsError(format!(
            "{}: no usable private key: {err}",
            files.key.display()
        ))
    })?;
    let provider = crypto_provider();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|err| TlsError(format!("TLS versions: {err}")))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(path)?), provider)
                    .build()
                    .map_err(|err| TlsError(format!("{}: {err}", path.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|err| {
        TlsError(format!(
            "{} and {}: {err}",
            files.cert.display(),
            files.key.display()
        ))
    })?;
    config.alpn_protocols = alpn.to_vec();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Every certificate in a PEM file; at least one.
///
/// # Errors
/// [`TlsError`] naming the file.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let unreadable = |err: &dyn fmt::Display| TlsError(format!("{}: {err}", path.display()));
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|err| unreadable(&err))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| unreadable(&err))?;
    if chain.is_empty() {
        return Err(unreadable(&"no PEM certificate in the file"));
    }
    Ok(chain)
}

/// The CAs in a PEM file, as a root store.
///
/// # Errors
/// [`TlsError`] naming the file.
pub fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path)? {
        roots
            .add(cert)
            .map_err(|err| TlsError(format!("{}: {err}", path.display())))?;
    }
    Ok(roots)
}

/// TLS towards an `https://` gRPC server: the server is verified against
/// `ca` (a PEM file) when given, else against the Mozilla roots; `identity`
/// (certificate and key PEM files) is presented when the server asks for a
/// client certificate.
///
/// # Errors
/// [`TlsError`] naming the file that cannot be read.
pub fn client_config(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let read =
        |path: &Path| fs::read(path).map_err(|err| TlsError(format!("{}: {err}", path.display())));
    let mut config = ClientTlsConfig::new();
    config = match ca {
        Some(ca) => {
            // Parsed here so a bad file is refused at start, not at the
            // first connection.
            certificates(ca)?;
            config.ca_certificate(Certificate::from_pem(read(ca)?))
        }
        None => config.with_webpki_roots(),
    };
    if let Some((cert, key)) = identity {
        certificates(cert)?;
        PrivateKeyDer::from_pem_file(key)
            .map_err(|err| TlsError(format!("{}: no usable private key: {err}", key.display())))?;
        config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(config)
}

/// `endpoint` with TLS when its scheme is `https` (verified against `ca`,
/// else the Mozilla roots; no client certificate), unchanged otherwise.
///
/// # Errors
/// [`TlsError`] when `ca` cannot be read or TLS cannot be configured.
pub fn client_endpoint(
    endpoint: tonic::transport::Endpoint,
    ca: Option<&Path>,
) -> Result<tonic::transport::Endpoint, TlsError> {
    if endpoint.uri().scheme_str() != Some("https") {
        return Ok(endpoint);
    }
    endpoint
        .tls_config(client_config(ca, None)?)
        .map_err(|err| TlsError(format!("TLS: {err}")))
}
