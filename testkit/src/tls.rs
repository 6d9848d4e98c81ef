//! TLS material made by a test: a CA, certificates it signs, the files a
//! server reads them from, and clients that trust only that CA.

use std::{path::PathBuf, sync::Arc, time::Duration};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// A certificate authority of the test.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A PEM certificate and its key.
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

impl Ca {
    /// A fresh self-signed CA named `name`.
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Self {
            cert: params.self_signed(&key).unwrap(),
            key,
        }
    }

    /// A fresh CA named `name` and the files of a server at `localhost`
    /// it signed: `cert.pem`, `key.pem`, and the CA itself as `ca.pem`.
    pub fn for_localhost(name: &str) -> (Self, TlsDir) {
        let ca = Self::new(name);
        let files = TlsDir::new(&ca.issue(&["localhost", "127.0.0.1"]));
        files.write("ca.pem", &ca.pem());
        (ca, files)
    }

    /// The CA certificate as PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for `names` (DNS names or IP addresses).
    pub fn issue(&self, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        Leaf {
            cert: params.signed_by(&key, &self.cert, &self.key).unwrap().pem(),
            key: key.serialize_pem(),
        }
    }

    /// A reqwest client trusting only this CA.
    pub fn https_client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.pem().as_bytes()).unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    /// A rustls client configuration trusting only this CA (for `wss://`).
    pub fn rustls_client(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(
                self.cert.der().to_vec(),
            ))
            .unwrap();
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
        )
    }

    /// tonic's TLS towards `localhost`, trusting only this CA and
    /// presenting `identity` if given.
    pub fn grpc_client(&self, identity: Option<&Leaf>) -> tonic::transport::ClientTlsConfig {
        let config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(self.pem()))
            .domain_name("localhost");
        match identity {
            Some(leaf) => {
                config.identity(tonic::transport::Identity::from_pem(&leaf.cert, &leaf.key))
            }
            None => config,
        }
    }
}

/// PEM files in a temporary directory, as a server reads them:
/// `cert.pem`, `key.pem`, and whatever else a test writes there.
pub struct TlsDir {
    dir: tempfile::TempDir,
}

impl TlsDir {
    /// A directory holding `leaf` as `cert.pem` and `key.pem`.
    pub fn new(leaf: &Leaf) -> Self {
        let files = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        files.rotate(leaf);
        files
    }

    /// The file `name` in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `cert.pem`.
    pub fn cert(&self) -> PathBuf {
        self.path("cert.pem")
    }

    /// `key.pem`.
    pub fn key(&self) -> PathBuf {
        self.path("key.pem")
    }

    /// `ca.pem` (written by [`Ca::for_localhost`]).
    pub fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// Writes `leaf` as `<name>.pem` and `<name>-key.pem`; returns both paths.
    pub fn write_leaf(&self, name: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
        (
            self.write(&format!("{name}.pem"), &leaf.cert),
            self.write(&format!("{name}-key.pem"), &leaf.key),
        )
    }

    /// Writes `pem` as the file `name` and returns its path.
    pub fn write(&self, name: &str, pem: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, pem).unwrap();
        path
    }

    /// Replaces certificate and key as a rotation does: new files renamed
    /// over the old ones.
    pub fn rotate(&self, leaf: &Leaf) {
        for (name, pem) in [("cert.pem", &leaf.cert), ("key.pem", &leaf.key)] {
            let staged = self.write(&format!("{name}.new"), pem);
            std::fs::rename(&staged, self.path(name)).unwrap();
        }
    }
}
