//! Issuing and verifying tokens, and checking the admin API key.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use fxcast_transport::Secret;
use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header, encode,
};
use rand::{RngCore, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::{
    Caller, Scopes,
    anonymous::AnonymousPolicy,
    keys::{KeyFile, unix, write_secret_file},
    revocations::{Revocations, Revoked, until_revoked},
};
use crate::Error;

/// Token lifetimes, keys and anonymous access. Files live in the data
/// directory given to [`TokenAuthority::open`]: `api-key`,
/// `signing-keys.json` and `tokens.sqlite3`.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The admin API key; generated into `<data_dir>/api-key` when `None`.
    pub api_key: Option<Secret>,
    /// Signing keys file; `<data_dir>/signing-keys.json` when `None`.
    pub signing_keys: Option<PathBuf>,
    /// TTL of a token when the request names none.
    pub default_ttl: Duration,
    /// Largest TTL a request may ask for; larger requests are refused.
    pub max_ttl: Duration,
    /// Whether loopback clients may get short-lived browser tokens without the API key.
    pub anonymous_tokens: bool,
    /// TTL of anonymous browser tokens.
    pub anonymous_ttl: Duration,
    /// Anonymous tokens per client address per minute.
    pub anonymous_per_minute: u32,
}

impl Default for AuthConfig {
    /// 15 min tokens, 24 h at most, no anonymous tokens.
    fn default() -> Self {
        Self {
            api_key: None,
            signing_keys: None,
            default_ttl: Duration::from_secs(15 * 60),
            max_ttl: Duration::from_secs(24 * 3600),
            anonymous_tokens: false,
            anonymous_ttl: Duration::from_secs(15 * 60),
            anonymous_per_minute: 30,
        }
    }
}

impl AuthConfig {
    /// Where the signing keys live.
    pub fn signing_keys_path(&self, data_dir: &Path) -> PathBuf {
        self.signing_keys
            .clone()
            .unwrap_or_else(|| data_dir.join("signing-keys.json"))
    }
}

/// Where a generated API key is kept.
pub fn api_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("api-key")
}

/// Why a credential was refused. Messages never contain the credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `authorization` header (or `?token=`).
    #[error("missing credentials: send `authorization: Bearer <token>`")]
    Missing,
    /// The header is not `Bearer <token>`.
    #[error("malformed authorization header: expected `Bearer <token>`")]
    MalformedHeader,
    /// Not a well-formed token.
    #[error("malformed token")]
    Malformed,
    /// Signed by a key this server does not know.
    #[error("token signed with an unknown key")]
    UnknownKey,
    /// The signature does not match.
    #[error("invalid token signature")]
    BadSignature,
    /// Past its expiry.
    #[error("token expired")]
    Expired,
    /// Explicitly revoked.
    #[error("token revoked")]
    Revoked,
    /// The admin API key used where a token is required.
    #[error(
        "the API key only issues tokens: call TokenService/IssueToken (or POST /v1/tokens) and use the token"
    )]
    ApiKeyNotAccepted,
    /// Anonymous tokens are not issued here; the message says how to
    /// authenticate instead.
    #[error("{0}")]
    AnonymousOff(&'static str),
    /// A valid credential without the scope a call needs.
    #[error("{0}")]
    PermissionDenied(String),
    /// Too many anonymous tokens for one client address.
    #[error("too many anonymous tokens for {client}: at most {per_minute} per minute")]
    TooManyAnonymous {
        /// The client's address.
        client: std::net::IpAddr,
        /// The limit.
        per_minute: u32,
    },
}

impl From<AuthError> for tonic::Status {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::PermissionDenied(_) => tonic::Status::permission_denied(err.to_string()),
            AuthError::TooManyAnonymous { .. } => {
                tonic::Status::resource_exhausted(err.to_string())
            }
            _ => tonic::Status::unauthenticated(err.to_string()),
        }
    }
}

/// JWT claims of an fxcast token.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    scope: String,
    jti: String,
    iat: u64,
    /// Whole seconds, rounded up, for standard JWT validation.
    exp: u64,
    /// The exact expiry in Unix milliseconds: a TTL keeps its sub-second
    /// part. Tokens issued before this claim existed carry only `exp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exp_ms: Option<u64>,
}

impl Claims {
    /// When the token stops being valid.
    fn expires_at(&self) -> SystemTime {
        match self.exp_ms {
            Some(ms) => UNIX_EPOCH + Duration::from_millis(ms),
            None => UNIX_EPOCH + Duration::from_secs(self.exp),
        }
    }
}

const ISSUER: &str = "fxcast";

/// A freshly issued token.
#[derive(Clone)]
pub struct IssuedToken {
    /// The signed JWT.
    pub token: String,
    /// Its id (`jti`), for revocation.
    pub token_id: String,
    /// Whom it was issued to.
    pub subject: String,
    /// What it allows.
    pub scopes: Scopes,
    /// When it expires.
    pub expires_at: SystemTime,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("token_id", &self.token_id)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

struct KeyState {
    file: KeyFile,
    decoding: HashMap<String, DecodingKey>,
    encoding: EncodingKey,
}

impl KeyState {
    fn new(file: KeyFile) -> Result<Self, Error> {
        let mut decoding = HashMap::new();
        for key in &file.keys {
            let decoding_key = DecodingKey::from_secret(&key.secret()?)
                .map_err(|e| Error::Config(format!("signing key {}: {e}", key.kid)))?;
            decoding.insert(key.kid.clone(), decoding_key);
        }
        let encoding = EncodingKey::from_secret(&file.active().secret()?)
            .map_err(|e| Error::Config(format!("signing key {}: {e}", file.active().kid)))?;
        Ok(Self {
            file,
            decoding,
            encoding,
        })
    }
}

/// Transport topic on which servers sharing signing keys tell each other
/// about revocations (JSON `{"token_id", "expires_at"}`, Unix seconds).
pub const REVOCATIONS_TOPIC: &str = "tokens.revoked";

/// The `token_id` of a caller authenticated by the admin API key.
pub const API_KEY_ID: &str = "api-key";

/// Why a credential stopped being valid while a stream was open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialEnd {
    /// The token reached its expiry.
    Expired,
    /// The token was revoked.
    Revoked,
}

impl CredentialEnd {
    /// `UNAUTHENTICATED` saying what happened and, after `then`, what to do.
    pub fn status(self, then: &str) -> tonic::Status {
        match self {
            Self::Expired => tonic::Status::unauthenticated(format!(
                "token expired; reconnect with a fresh token{then}"
            )),
            Self::Revoked => tonic::Status::unauthenticated(format!(
                "token revoked; reconnect with another token{then}"
            )),
        }
    }

    /// The status a long-lived stream ends with before its data does:
    /// `UNAVAILABLE` saying `shutting_down` once `shutdown` is cancelled,
    /// or this end's status (see [`status`](Self::status)) once
    /// `credential_end` completes, whichever is first.
    pub(crate) fn or_shutdown(
        credential_end: impl Future<Output = Self> + Send + 'static,
        shutdown: tokio_util::sync::CancellationToken,
        shutting_down: &'static str,
        then: &'static str,
    ) -> StreamEnd {
        Box::pin(async move {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => tonic::Status::unavailable(shutting_down),
                end = credential_end => end.status(then),
            }
        })
    }
}

/// The end of a long-lived stream: see [`CredentialEnd::or_shutdown`].
pub(crate) type StreamEnd = std::pin::Pin<Box<dyn Future<Output = tonic::Status> + Send>>;

/// What a long-lived stream waits on for its next item: `next`'s output, or
/// the status of `end` when that comes first. `end` is polled first, so a
/// stream whose data keeps coming still ends on time.
pub(crate) async fn unless_ended<T>(
    end: &mut StreamEnd,
    next: impl Future<Output = T>,
) -> Result<T, tonic::Status> {
    tokio::select! {
        biased;
        status = end => Err(status),
        item = next => Ok(item),
    }
}

/// Issues and verifies tokens; checks the API key. A cheap `Clone` handle.
#[derive(Clone)]
pub struct TokenAuthority {
    inner: Arc<Inner>,
}

struct Inner {
    config: AuthConfig,
    keys_path: PathBuf,
    keys: RwLock<KeyState>,
    api_key: String,
    revocations: Revocations,
    validation: Validation,
    anonymous: AnonymousPolicy,
    /// When the key file was last re-read for an unknown key id: at most
    /// once per [`KEY_RELOAD_INTERVAL`], so tokens with made-up key ids
    /// cannot make every request read the disk.
    last_reload: std::sync::Mutex<Option<std::time::Instant>>,
    /// Tokens already verified (signature, header, claims), by their exact
    /// text, with their caller: a client sends the same token with every
    /// call, and checking its HMAC and decoding its JSON again cost more
    /// than the rest of authentication. Revocation and expiry are still
    /// checked on every call; the set is emptied whenever the signing keys
    /// are re-read, and when full. A std mutex: held for one lookup.
    verified: std::sync::Mutex<HashMap<Box<str>, Caller>>,
}

/// Most verified tokens remembered at once.
const VERIFIED_TOKENS: usize = 4096;

/// Shortest time between two re-reads of the signing keys file.
const KEY_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

impl std::fmt::Debug for TokenAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAuthority")
            .field("keys", &self.inner.keys_path)
            .finish_non_exhaustive()
    }
}

fn random_id(bytes: usize) -> String {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let mut buf = vec![0u8; bytes];
    StdRng::from_os_rng().fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// Reads the API key from `path`, generating it (mode 0600) on first use.
fn load_or_create_api_key(path: &Path) -> Result<String, Error> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().len() >= 16 => Ok(text.trim().to_owned()),
        Ok(_) => Err(Error::Config(format!(
            "API key file {} holds fewer than 16 characters",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = format!("fxk_{}", random_id(32));
            write_secret_file(path, key.as_bytes())?;
            tracing::info!(path = %path.display(), "generated the admin API key");
            Ok(key)
        }
        Err(source) => Err(Error::Io {
            context: format!("cannot read API key {}", path.display()),
            source,
        }),
    }
}

impl TokenAuthority {
    /// Loads (or creates) keys, the API key and the revocation store.
    ///
    /// # Errors
    /// [`Error::Io`] / [`Error::Config`] for unreadable or malformed files.
    pub fn open(data_dir: &Path, config: AuthConfig) -> Result<Self, Error> {
        std::fs::create_dir_all(data_dir).map_err(|source| Error::Io {
            context: format!("cannot create data directory {}", data_dir.display()),
            source,
        })?;
        let keys_path = config.signing_keys_path(data_dir);
        let keys = KeyState::new(KeyFile::load_or_create(&keys_path)?)?;
        let api_key = match &config.api_key {
            Some(key) if key.expose().len() >= 16 => key.expose().to_owned(),
            Some(_) => {
                return Err(Error::Config(
                    "FXCAST_API_KEY must be at least 16 characters".into(),
                ));
            }
            None => load_or_create_api_key(&api_key_path(data_dir))?,
        };
        if config.api_key.is_some() {
            tracing::info!("admin API key taken from FXCAST_API_KEY");
        } else {
            tracing::info!(path = %api_key_path(data_dir).display(), "admin API key file");
        }
        let anonymous = AnonymousPolicy::new(config.anonymous_ttl, config.anonymous_per_minute);
        let revocations = Revocations::open(&data_dir.join("tokens.sqlite3"))?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "sub", "iss"]);
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                keys_path,
                keys: RwLock::new(keys),
                api_key,
                revocations,
                validation,
                anonymous,
                last_reload: std::sync::Mutex::new(None),
                verified: std::sync::Mutex::default(),
            }),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &AuthConfig {
        &self.inner.config
    }

    /// The signing keys file.
    pub fn signing_keys_path(&self) -> &Path {
        &self.inner.keys_path
    }

    /// The admin API key, for in-process components that call the services
    /// as the admin (the gateway minting its own and browsers' tokens).
    /// Never log it.
    pub fn api_key(&self) -> &str {
        &self.inner.api_key
    }

    /// Whether `candidate` is the admin API key (constant time).
    pub fn is_api_key(&self, candidate: &str) -> bool {
        candidate
            .as_bytes()
            .ct_eq(self.inner.api_key.as_bytes())
            .into()
    }

    /// Issues a token.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty or malformed subject, no
    /// scopes, or a TTL of zero or above the maximum.
    pub fn issue(
        &self,
        subject: &str,
        scopes: Scopes,
        ttl: Option<Duration>,
    ) -> Result<IssuedToken, Error> {
        let keys = self.inner.keys.read().unwrap_or_else(|e| e.into_inner());
        sign(
            &keys.encoding,
            &keys.file.active().kid,
            &self.inner.config,
            subject,
            scopes,
            ttl,
        )
    }

    /// Issues a short-lived browser token without the API key, to a loopback
    /// client, at most `anonymous_per_minute` per address.
    ///
    /// # Errors
    /// [`AuthError::AnonymousOff`] (`UNAUTHENTICATED`) when anonymous tokens
    /// are off or the client is not on loopback;
    /// [`AuthError::TooManyAnonymous`] over the rate limit.
    pub fn issue_anonymous(&self, client: Option<IpAddr>) -> Result<IssuedToken, crate::Error> {
        let Some(ip) = client.filter(|ip| self.inner.config.anonymous_tokens && ip.is_loopback())
        else {
            return Err(AuthError::AnonymousOff(
                "missing credentials: IssueToken needs `authorization: Bearer <API key>` (anonymous browser tokens are only issued to loopback clients when the gateway listens on loopback)",
            )
            .into());
        };
        let grant = self.inner.anonymous.grant(ip)?;
        self.issue(&grant.subject, grant.scopes, Some(grant.ttl))
    }

    /// Verifies a token and returns its caller.
    ///
    /// # Errors
    /// The [`AuthError`] saying why it was refused.
    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let known = self.verified().get(token).cloned();
        if let Some(caller) = known {
            if self.inner.revocations.is_revoked(&caller.token_id) {
                return Err(AuthError::Revoked);
            }
            if caller.expires_at.is_none_or(|at| SystemTime::now() >= at) {
                self.verified().remove(token);
                return Err(AuthError::Expired);
            }
            return Ok(caller);
        }
        let caller = self.verify_signed(token)?;
        let mut verified = self.verified();
        if verified.len() >= VERIFIED_TOKENS {
            verified.clear();
        }
        verified.insert(token.into(), caller.clone());
        Ok(caller)
    }

    fn verified(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Caller>> {
        self.inner
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// [`Self::verify`] without the memory of verified tokens.
    fn verify_signed(&self, token: &str) -> Result<Caller, AuthError> {
        let header = decode_header(token).map_err(|_| AuthError::Malformed)?;
        if header.alg != Algorithm::HS256 {
            return Err(AuthError::Malformed);
        }
        let kid = header.kid.ok_or(AuthError::Malformed)?;
        let claims = {
            let keys = self.inner.keys.read().unwrap_or_else(|e| e.into_inner());
            match keys.decoding.get(&kid) {
                Some(key) => decode::<Claims>(token, key, &self.inner.validation),
                None => {
                    drop(keys);
                    // A key rotated in by another process: reload once.
                    self.reload_keys();
                    let keys = self.inner.keys.read().unwrap_or_else(|e| e.into_inner());
                    let key = keys.decoding.get(&kid).ok_or(AuthError::UnknownKey)?;
                    decode::<Claims>(token, key, &self.inner.validation)
                }
            }
        }
        .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                _ => AuthError::Malformed,
            }
        })?
        .claims;
        if self.inner.revocations.is_revoked(&claims.jti) {
            return Err(AuthError::Revoked);
        }
        // `exp` (whole seconds) was checked by the JWT validation; the
        // exact expiry may be earlier within that second.
        let expires_at = claims.expires_at();
        if SystemTime::now() >= expires_at {
            return Err(AuthError::Expired);
        }
        let scopes: Scopes = claims.scope.parse().map_err(|_| AuthError::Malformed)?;
        Ok(Caller {
            subject: claims.sub,
            token_id: claims.jti,
            scopes,
            expires_at: Some(expires_at),
        })
    }

    /// Authenticates an `authorization` header value (or a bare token from a
    /// `?token=` query). `allow_api_key` admits the admin key (token
    /// management calls only).
    ///
    /// # Errors
    /// The [`AuthError`] saying why it was refused.
    pub fn authenticate(
        &self,
        header: Option<&str>,
        allow_api_key: bool,
    ) -> Result<Caller, AuthError> {
        let value = header.ok_or(AuthError::Missing)?.trim();
        let (scheme, credential) = value.split_once(' ').ok_or(AuthError::MalformedHeader)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::MalformedHeader);
        }
        let credential = credential.trim();
        if credential.is_empty() {
            return Err(AuthError::MalformedHeader);
        }
        if self.is_api_key(credential) {
            return if allow_api_key {
                Ok(Caller {
                    subject: "admin".into(),
                    token_id: API_KEY_ID.into(),
                    scopes: Scopes::admin(),
                    expires_at: None,
                })
            } else {
                Err(AuthError::ApiKeyNotAccepted)
            };
        }
        self.verify(credential)
    }

    /// Revokes a token id; its tokens are refused from now on, also after a
    /// restart.
    ///
    /// # Errors
    /// [`Error::Io`] when the revocation cannot be stored.
    pub fn revoke(&self, token_id: &str) -> Result<(), Error> {
        if token_id.is_empty() || token_id.len() > 64 {
            return Err(Error::InvalidArgument(
                "token_id must be 1-64 characters".into(),
            ));
        }
        // The token cannot outlive the maximum TTL from now.
        self.inner
            .revocations
            .revoke(token_id, SystemTime::now() + self.inner.config.max_ttl)
    }

    /// Records a revocation made by another server sharing this one's
    /// tokens (received on [`REVOCATIONS_TOPIC`]), valid until `expires_at`.
    /// Idempotent.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a malformed id, [`Error::Io`] when it
    /// cannot be stored.
    pub fn apply_revocation(&self, token_id: &str, expires_at: SystemTime) -> Result<(), Error> {
        if token_id.is_empty() || token_id.len() > 64 {
            return Err(Error::InvalidArgument(
                "token_id must be 1-64 characters".into(),
            ));
        }
        if expires_at <= SystemTime::now() {
            return Ok(());
        }
        self.inner.revocations.revoke(token_id, expires_at)
    }

    /// Whether `token_id` is revoked.
    pub fn is_revoked(&self, token_id: &str) -> bool {
        self.inner.revocations.is_revoked(token_id)
    }

    /// Every revocation still in force.
    pub fn revocations(&self) -> Vec<Revoked> {
        self.inner.revocations.entries()
    }

    /// Each revocation from now on; a receiver that lags should re-read
    /// [`revocations`](Self::revocations).
    pub fn watch_revocations(&self) -> tokio::sync::broadcast::Receiver<Revoked> {
        self.inner.revocations.subscribe()
    }

    /// Completes when `caller`'s credential ends: it expires, or its token is
    /// revoked. Long-lived streams select on it and end with
    /// `UNAUTHENTICATED`. Starts watching at once (not when first polled),
    /// so a revocation after this call is never missed. The admin API key
    /// neither expires nor can be revoked by id.
    pub fn credential_end(
        &self,
        caller: &Caller,
    ) -> impl Future<Output = CredentialEnd> + Send + 'static {
        let news = self.inner.revocations.subscribe();
        let revocations = self.inner.revocations.clone();
        let token_id = (caller.token_id != API_KEY_ID).then(|| caller.token_id.clone());
        let expiry = caller.expires_at.map(|at| {
            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::time::Instant::now() + left
        });
        let revoked = async move {
            let Some(token_id) = token_id else {
                return std::future::pending().await;
            };
            let names_it = |revoked: &Revoked| *revoked.token_id == *token_id;
            until_revoked(news, names_it, || revocations.is_revoked(&token_id)).await;
        };
        async move {
            let expired = async {
                match expiry {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = revoked => CredentialEnd::Revoked,
                () = expired => CredentialEnd::Expired,
            }
        }
    }

    fn reload_keys(&self) {
        {
            let mut last = self
                .inner
                .last_reload
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|at| at.elapsed() < KEY_RELOAD_INTERVAL) {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        match KeyFile::load(&self.inner.keys_path).and_then(KeyState::new) {
            Ok(state) => {
                *self.inner.keys.write().unwrap_or_else(|e| e.into_inner()) = state;
                // A key may be gone: verify every token again.
                self.verified().clear();
            }
            Err(err) => tracing::warn!(error = %err, "cannot reload signing keys"),
        }
    }
}

/// Signs a token with the active key of the key file at `keys_path`, without
/// a running server (signed URLs minted by `fxcast token --url`).
///
/// # Errors
/// [`Error::Io`] / [`Error::Config`] when the key file cannot be read, and the
/// same argument errors as [`TokenAuthority::issue`].
pub fn issue_offline(
    keys_path: &Path,
    config: &AuthConfig,
    subject: &str,
    scopes: Scopes,
    ttl: Option<Duration>,
) -> Result<IssuedToken, Error> {
    let file = KeyFile::load(keys_path)?;
    let key = file.active();
    let encoding = EncodingKey::from_secret(&key.secret()?)
        .map_err(|e| Error::Config(format!("signing key {}: {e}", key.kid)))?;
    sign(&encoding, &key.kid, config, subject, scopes, ttl)
}

fn sign(
    encoding: &EncodingKey,
    kid: &str,
    config: &AuthConfig,
    subject: &str,
    scopes: Scopes,
    ttl: Option<Duration>,
) -> Result<IssuedToken, Error> {
    validate_subject(subject)?;
    if scopes.0.is_empty() {
        return Err(Error::InvalidArgument(
            "scopes: at least one scope is required".into(),
        ));
    }
    let ttl = ttl.unwrap_or(config.default_ttl);
    if ttl.is_zero() {
        return Err(Error::InvalidArgument("ttl must be positive".into()));
    }
    if ttl > config.max_ttl {
        return Err(Error::InvalidArgument(format!(
            "ttl {} is above the maximum of {}",
            humantime::format_duration(ttl),
            humantime::format_duration(config.max_ttl)
        )));
    }
    let now = SystemTime::now();
    // Exact to the millisecond (rounded up, so a token lasts at least its
    // TTL); JWT's own `exp` is whole seconds, rounded up too.
    let expires_ms = unix_millis(now).saturating_add(ttl.as_nanos().div_ceil(1_000_000) as u64);
    let claims = Claims {
        iss: ISSUER.to_owned(),
        sub: subject.to_owned(),
        scope: scopes.to_string(),
        jti: random_id(12),
        iat: unix(now),
        exp: expires_ms.div_ceil(1000),
        exp_ms: Some(expires_ms),
    };
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.to_owned());
    let expires_at = claims.expires_at();
    let token = encode(&header, &claims, encoding)
        .map_err(|e| Error::Config(format!("cannot sign token: {e}")))?;
    Ok(IssuedToken {
        token,
        token_id: claims.jti,
        subject: claims.sub,
        scopes,
        expires_at,
    })
}

fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Subjects: 1–64 characters of `[A-Za-z0-9._@-]` (they become topic names).
///
/// # Errors
/// [`Error::InvalidArgument`] saying what is wrong.
pub fn validate_subject(subject: &str) -> Result<(), Error> {
    let ok = !subject.is_empty()
        && subject.len() <= 64
        && subject
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "subject {} is invalid: use 1-64 characters of A-Z, a-z, 0-9, '.', '_', '-', '@'",
            crate::quote::quoted(subject)
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority(dir: &Path) -> TokenAuthority {
        TokenAuthority::open(dir, AuthConfig::default()).unwrap()
    }

    fn temp() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fxcast-auth-{}", random_id(6)));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A token for alice with `scopes` and the default ttl.
    fn alices_token(auth: &TokenAuthority, scopes: &str) -> IssuedToken {
        auth.issue("alice", scopes.parse().unwrap(), None).unwrap()
    }

    /// A token signed by another server's keys.
    fn strangers_token() -> IssuedToken {
        authority(&temp())
            .issue("mallory", Scopes::admin(), None)
            .unwrap()
    }

    /// Rotates the signing keys in `auth`'s key file, as another process
    /// sharing the data directory would.
    fn rotate_keys(auth: &TokenAuthority) {
        let path = auth.signing_keys_path();
        let mut file = KeyFile::load(path).unwrap();
        file.rotate(SystemTime::now(), Duration::from_secs(24 * 3600));
        file.save(path).unwrap();
    }

    #[test]
    fn issued_tokens_verify_with_their_claims() {
        let auth = authority(&temp());
        let issued = alices_token(&auth, "rates:subscribe=USD_JPY orders:place");
        let caller = auth.verify(&issued.token).unwrap();
        assert_eq!(caller.subject, "alice");
        assert_eq!(caller.token_id, issued.token_id);
        assert!(caller.scopes.may_subscribe("USD_JPY") && !caller.scopes.may_subscribe("EUR_USD"));
        let ttl = issued.expires_at.duration_since(SystemTime::now()).unwrap();
        assert!(
            ttl <= Duration::from_secs(15 * 60) && ttl > Duration::from_secs(14 * 60),
            "{ttl:?}"
        );
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let auth = authority(&temp());
        let token = alices_token(&auth, "rates:subscribe=*").token;
        let bytes = token.as_bytes();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut flipped = bytes.to_vec();
                flipped[i] ^= 1 << bit;
                if let Ok(s) = std::str::from_utf8(&flipped) {
                    assert!(
                        auth.verify(s).is_err(),
                        "flip of bit {bit} of byte {i} was accepted: {s}"
                    );
                }
            }
        }
    }

    #[test]
    fn ttl_above_the_maximum_is_refused_not_cut() {
        let auth = authority(&temp());
        let err = auth
            .issue(
                "alice",
                Scopes::admin(),
                Some(Duration::from_secs(25 * 3600)),
            )
            .unwrap_err();
        assert_eq!(err.to_string(), "ttl 1day 1h is above the maximum of 1day");
        assert!(auth.issue("a b", Scopes::admin(), None).is_err());
        assert!(auth.issue("alice", Scopes::default(), None).is_err());
    }

    #[test]
    fn revocation_is_immediate_and_survives_a_restart() {
        let dir = temp();
        let auth = authority(&dir);
        let issued = auth.issue("alice", Scopes::admin(), None).unwrap();
        // Verified once, so remembered: the revocation still applies.
        auth.verify(&issued.token).unwrap();
        auth.revoke(&issued.token_id).unwrap();
        assert_eq!(auth.verify(&issued.token).unwrap_err(), AuthError::Revoked);
        drop(auth);
        assert_eq!(
            authority(&dir).verify(&issued.token).unwrap_err(),
            AuthError::Revoked
        );
    }

    #[test]
    fn a_remembered_token_still_expires_to_the_millisecond() {
        let auth = authority(&temp());
        let issued = auth
            .issue("alice", Scopes::admin(), Some(Duration::from_millis(30)))
            .unwrap();
        auth.verify(&issued.token).unwrap();
        // Waits for the expiry itself, not for anything to get ready.
        std::thread::sleep(
            issued
                .expires_at
                .duration_since(SystemTime::now())
                .unwrap_or_default(),
        );
        assert_eq!(auth.verify(&issued.token).unwrap_err(), AuthError::Expired);
    }

    #[test]
    fn rotated_keys_keep_old_tokens_valid_and_other_servers_keys_fail() {
        let dir = temp();
        let auth = authority(&dir);
        let old = auth.issue("alice", Scopes::admin(), None).unwrap();
        rotate_keys(&auth);
        let restarted = authority(&dir);
        let new = restarted.issue("bob", Scopes::admin(), None).unwrap();
        assert!(
            restarted.verify(&old.token).is_ok(),
            "old key must still verify"
        );
        // The running server picks the new key up on first sight.
        assert!(auth.verify(&new.token).is_ok());
        let stranger = strangers_token();
        assert_eq!(
            auth.verify(&stranger.token).unwrap_err(),
            AuthError::UnknownKey
        );
    }

    #[test]
    fn unknown_key_ids_reread_the_key_file_at_most_once_a_second() {
        let dir = temp();
        let auth = authority(&dir);
        let stranger = strangers_token();
        assert_eq!(
            auth.verify(&stranger.token).unwrap_err(),
            AuthError::UnknownKey
        );
        // A key rotated in right after that re-read is not seen yet...
        rotate_keys(&auth);
        let new = authority(&dir).issue("bob", Scopes::admin(), None).unwrap();
        assert_eq!(auth.verify(&new.token).unwrap_err(), AuthError::UnknownKey);
        // ... until the interval has passed.
        *auth.inner.last_reload.lock().unwrap() =
            Some(std::time::Instant::now() - KEY_RELOAD_INTERVAL);
        assert!(auth.verify(&new.token).is_ok());
    }

    #[test]
    fn api_key_is_generated_privately_and_only_accepted_where_allowed() {
        let dir = temp();
        let auth = authority(&dir);
        let key = std::fs::read_to_string(dir.join("api-key")).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(dir.join("api-key"))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o777,
                0o600
            );
        }
        let header = format!("Bearer {key}");
        assert_eq!(
            auth.authenticate(Some(&header), true).unwrap().subject,
            "admin"
        );
        assert_eq!(
            auth.authenticate(Some(&header), false).unwrap_err(),
            AuthError::ApiKeyNotAccepted
        );
        assert_eq!(
            auth.authenticate(None, true).unwrap_err(),
            AuthError::Missing
        );
        assert_eq!(
            auth.authenticate(Some("Basic abc"), true).unwrap_err(),
            AuthError::MalformedHeader
        );
        assert_eq!(
            auth.authenticate(Some("Bearer garbage"), true).unwrap_err(),
            AuthError::Malformed
        );
        assert!(!AuthError::ApiKeyNotAccepted.to_string().contains(&key));
    }
}
