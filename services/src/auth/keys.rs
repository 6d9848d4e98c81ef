//! HS256 signing keys with key ids, persisted in one file (mode 0600).
//!
//! The newest key signs; every key still in the file verifies, so rotating
//! (adding a new key) never invalidates tokens already issued. A retired key
//! is pruned once it can no longer have unexpired tokens (max TTL after it
//! was retired).

use std::{
    fmt,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::{RngCore, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use crate::Error;

/// One signing key.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SigningKey {
    /// Key id, carried in every token's `kid` header.
    pub kid: String,
    /// The HMAC secret, base64url.
    secret: String,
    /// When it was created (Unix seconds).
    pub created_at: u64,
    /// When a newer key replaced it (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<u64>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh random 256-bit key.
    pub fn generate(now: SystemTime) -> Self {
        let mut secret = [0u8; 32];
        StdRng::from_os_rng().fill_bytes(&mut secret);
        let mut id = [0u8; 6];
        StdRng::from_os_rng().fill_bytes(&mut id);
        Self {
            kid: format!("k{}", URL_SAFE_NO_PAD.encode(id)),
            secret: URL_SAFE_NO_PAD.encode(secret),
            created_at: unix(now),
            retired_at: None,
        }
    }

    /// The secret bytes.
    ///
    /// # Errors
    /// [`Error::Config`] when the stored secret is not base64url or too short.
    pub fn secret(&self) -> Result<Vec<u8>, Error> {
        let bytes = URL_SAFE_NO_PAD.decode(&self.secret).map_err(|_| {
            Error::Config(format!("signing key {} is not valid base64url", self.kid))
        })?;
        if bytes.len() < 32 {
            return Err(Error::Config(format!(
                "signing key {} is shorter than 256 bits",
                self.kid
            )));
        }
        Ok(bytes)
    }
}

/// The keys of one server, newest (active) last.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyFile {
    /// Every key that still verifies; the last one signs.
    pub keys: Vec<SigningKey>,
}

pub(crate) fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl KeyFile {
    /// Reads the key file, creating it with one fresh key if it does not exist.
    ///
    /// # Errors
    /// [`Error::Io`] or [`Error::Config`] for an unreadable or malformed file.
    pub fn load_or_create(path: &Path) -> Result<Self, Error> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let file = KeyFile {
                    keys: vec![SigningKey::generate(SystemTime::now())],
                };
                file.save(path)?;
                tracing::info!(path = %path.display(), "generated a new token signing key");
                Ok(file)
            }
            Err(source) => Err(Error::Io {
                context: format!("cannot read signing keys {}", path.display()),
                source,
            }),
        }
    }

    /// Reads an existing key file.
    ///
    /// # Errors
    /// [`Error::Io`] or [`Error::Config`].
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            context: format!("cannot read signing keys {}", path.display()),
            source,
        })?;
        Self::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<Self, Error> {
        let file: KeyFile = serde_json::from_str(text).map_err(|e| {
            Error::Config(format!(
                "signing key file {} is malformed: {e}",
                path.display()
            ))
        })?;
        if file.keys.is_empty() {
            return Err(Error::Config(format!(
                "signing key file {} has no keys",
                path.display()
            )));
        }
        for key in &file.keys {
            key.secret()?;
        }
        Ok(file)
    }

    /// Writes the file atomically with mode 0600.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let json = serde_json::to_string_pretty(self).expect("key file serialises");
        write_secret_file(path, json.as_bytes())
    }

    /// The key that signs new tokens.
    pub fn active(&self) -> &SigningKey {
        self.keys.last().expect("a key file always has a key")
    }

    /// Adds a new active key, retires the previous one and prunes keys that
    /// were retired more than `max_ttl` ago. Returns the new key id.
    pub fn rotate(&mut self, now: SystemTime, max_ttl: Duration) -> String {
        let now_s = unix(now);
        for key in &mut self.keys {
            key.retired_at.get_or_insert(now_s);
        }
        self.keys
            .retain(|k| k.retired_at.is_none_or(|r| r + max_ttl.as_secs() >= now_s));
        let key = SigningKey::generate(now);
        let kid = key.kid.clone();
        self.keys.push(key);
        kid
    }

    /// Finds a key by id.
    pub fn get(&self, kid: &str) -> Option<&SigningKey> {
        self.keys.iter().find(|k| k.kid == kid)
    }
}

/// Writes `bytes` to `path` atomically (temp file + rename) with mode 0600,
/// creating the parent directory.
///
/// # Errors
/// [`Error::Io`].
pub fn write_secret_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    let io = |context: String| move |source| Error::Io { context, source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
    }
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(&tmp)
        .map_err(io(format!("cannot write {}", tmp.display())))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io(format!("cannot write {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("cannot replace {}", path.display())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_file_is_private_and_reloads() {
        let dir = tempfile_dir();
        let path = dir.join("keys.json");
        let created = KeyFile::load_or_create(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert_eq!(KeyFile::load_or_create(&path).unwrap(), created);
        assert!(
            !format!("{created:?}").contains(&created.active().secret),
            "Debug must not print secrets"
        );
    }

    #[test]
    fn rotation_keeps_old_keys_until_their_tokens_expire() {
        let t0 = SystemTime::now();
        let mut file = KeyFile {
            keys: vec![SigningKey::generate(t0)],
        };
        let first = file.active().kid.clone();
        let second = file.rotate(t0, Duration::from_secs(3600));
        assert_eq!(file.active().kid, second);
        assert!(file.get(&first).is_some());
        file.rotate(t0 + Duration::from_secs(3601), Duration::from_secs(3600));
        assert!(
            file.get(&first).is_none(),
            "a key retired longer than the max TTL ago is pruned"
        );
        assert!(file.get(&second).is_some());
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "fxcast-keys-{}",
            SigningKey::generate(SystemTime::now()).kid
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
