//! Who may call: API keys, disposable tokens and the permissions they carry.
//!
//! A caller presents its credential in the `authorization` header, as the
//! Momento SDKs send it. Two kinds are told apart:
//! - **disposable tokens** minted here by `GenerateDisposableToken`: HS256
//!   JWTs signed with a secret drawn at start, whose key id marks them as
//!   momento-local's. They carry their permissions and expiry, are checked on
//!   every call, and do not survive a restart (the secret is not persisted).
//! - **API keys**: anything else. With [`AcceptedKeys::Any`] (the default,
//!   for local development) every key is accepted, including the empty one
//!   the Python SDK's `for_momento_local` sends; with [`AcceptedKeys::Only`]
//!   just the configured keys are. An API key may do everything.
//!
//! Disposable tokens are stateless, so minting them costs no memory however
//! many a client asks for.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use momento_protos::{
    permission_messages::{
        CacheRole, Permissions, permissions, permissions_type,
        permissions_type::{
            cache_item_selector, cache_permissions, cache_selector, topic_permissions,
            topic_selector,
        },
    },
    token::{GenerateDisposableTokenRequest, GenerateDisposableTokenResponse, token_server::Token},
};
use prost::Message;
use rand::{RngCore, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tonic::{Request, Response, Status, service::Interceptor};

/// Which API keys momento-local accepts. Disposable tokens it minted are
/// accepted either way, within their permissions and expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcceptedKeys {
    /// Any key, including an empty or missing one: the local-development
    /// default, matching what the SDKs' local-development credential
    /// providers send.
    Any,
    /// Only these keys; anything else is `UNAUTHENTICATED`.
    Only(Vec<String>),
}

/// Marks the key id of tokens minted by momento-local.
const KEY_ID_PREFIX: &str = "momento-local/";

/// The SDKs refuse longer token ids.
const MAX_TOKEN_ID_CHARS: usize = 64;

/// Checks credentials and mints disposable tokens.
pub(super) struct Authority {
    accepted: AcceptedKeys,
    /// The longest life a minted token may have.
    max_lifetime: Duration,
    endpoint: String,
    key_id: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("endpoint", &self.endpoint)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// The JWT claims of a disposable token.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// A unique id of this token.
    jti: String,
    /// The caller-chosen token id, shown to subscribers as `publisher_id`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    tid: String,
    /// Expiry in milliseconds since the Unix epoch: finer than JWT's `exp`,
    /// so a one-second token lasts one second.
    exp_ms: u64,
    /// The granted `Permissions` message, protobuf-encoded, base64url.
    perms: String,
}

fn random_id(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    StdRng::from_os_rng().fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Authority {
    /// An authority with a fresh signing secret: tokens of an earlier run
    /// are refused.
    pub(super) fn new(accepted: AcceptedKeys, endpoint: String, max_lifetime: Duration) -> Self {
        let mut secret = [0u8; 32];
        StdRng::from_os_rng().fill_bytes(&mut secret);
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry is `exp_ms`, checked below with a message saying so.
        validation.validate_exp = false;
        validation.set_required_spec_claims::<&str>(&[]);
        Self {
            accepted,
            max_lifetime,
            endpoint,
            key_id: format!("{KEY_ID_PREFIX}{}", random_id(9)),
            // Refused only for an empty secret.
            encoding: EncodingKey::from_secret(&secret).expect("32-byte secret"),
            decoding: DecodingKey::from_secret(&secret).expect("32-byte secret"),
            validation,
        }
    }

    /// Who presents `credential` (the `authorization` header; `None` when
    /// absent).
    ///
    /// # Errors
    /// `UNAUTHENTICATED` for an unknown API key, or a disposable token that
    /// is expired, tampered with or from an earlier run.
    pub(super) fn authenticate(&self, credential: Option<&str>) -> Result<Caller, Status> {
        let credential = credential.unwrap_or_default();
        if let Some(verified) = self.disposable_token(credential) {
            return verified;
        }
        match &self.accepted {
            AcceptedKeys::Any => Ok(Caller::ApiKey),
            AcceptedKeys::Only(keys) => {
                // Compare with every key, in constant time per key.
                let known = keys.iter().fold(false, |found, key| {
                    found | bool::from(key.as_bytes().ct_eq(credential.as_bytes()))
                });
                if known {
                    Ok(Caller::ApiKey)
                } else if credential.is_empty() {
                    Err(Status::unauthenticated(
                        "no API key: this momento-local accepts only its configured API keys",
                    ))
                } else {
                    Err(Status::unauthenticated(
                        "unknown API key: this momento-local accepts only its configured API keys",
                    ))
                }
            }
        }
    }

    /// `None` when `credential` is not a momento-local token at all.
    fn disposable_token(&self, credential: &str) -> Option<Result<Caller, Status>> {
        let kid = jsonwebtoken::decode_header(credential).ok()?.kid?;
        if !kid.starts_with(KEY_ID_PREFIX) {
            return None;
        }
        if kid != self.key_id {
            return Some(Err(Status::unauthenticated(
                "disposable token from another momento-local run: tokens do not survive a restart",
            )));
        }
        Some(self.verify(credential))
    }

    fn verify(&self, token: &str) -> Result<Caller, Status> {
        let invalid = || Status::unauthenticated("invalid disposable token");
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|_| invalid())?
            .claims;
        let now = now_ms();
        if now >= claims.exp_ms {
            return Err(Status::unauthenticated(format!(
                "disposable token expired {} ms ago",
                now - claims.exp_ms
            )));
        }
        let encoded = URL_SAFE_NO_PAD
            .decode(&claims.perms)
            .map_err(|_| invalid())?;
        let permissions = Permissions::decode(encoded.as_slice()).map_err(|_| invalid())?;
        let rules = rules_from(&permissions).map_err(|_| invalid())?;
        Ok(Caller::Token(Arc::new(Grant {
            publisher_id: claims.tid,
            expires_at: UNIX_EPOCH + Duration::from_millis(claims.exp_ms),
            rules,
        })))
    }

    /// Mints a disposable token for a `GenerateDisposableToken` request.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` for a missing or out-of-range expiry, a too-long
    /// token id, or permissions that grant nothing or cannot be understood.
    fn mint(
        &self,
        request: GenerateDisposableTokenRequest,
    ) -> Result<GenerateDisposableTokenResponse, Status> {
        let valid_for = request
            .expires
            .map(|e| Duration::from_secs(u64::from(e.valid_for_seconds)))
            .ok_or_else(|| Status::invalid_argument("expires is required"))?;
        if valid_for.is_zero() || valid_for > self.max_lifetime {
            return Err(Status::invalid_argument(format!(
                "disposable tokens must expire within 1 second to {} seconds",
                self.max_lifetime.as_secs()
            )));
        }
        if request.token_id.chars().count() > MAX_TOKEN_ID_CHARS {
            return Err(Status::invalid_argument(
                "token_id must be at most 64 characters",
            ));
        }
        let permissions = request
            .permissions
            .ok_or_else(|| Status::invalid_argument("permissions are required"))?;
        rules_from(&permissions).map_err(Status::invalid_argument)?;
        let exp_ms = now_ms().saturating_add(valid_for.as_millis() as u64);
        let claims = Claims {
            jti: random_id(12),
            tid: request.token_id,
            exp_ms,
            perms: URL_SAFE_NO_PAD.encode(permissions.encode_to_vec()),
        };
        let header = Header {
            kid: Some(self.key_id.clone()),
            ..Header::new(Algorithm::HS256)
        };
        let api_key = jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| Status::internal(format!("cannot sign a disposable token: {e}")))?;
        Ok(GenerateDisposableTokenResponse {
            api_key,
            endpoint: self.endpoint.clone(),
            // Rounded up: the token is refused from this second on.
            valid_until: exp_ms.div_ceil(1000),
        })
    }
}

/// What a disposable token may do.
#[derive(Debug)]
pub(super) struct Grant {
    publisher_id: String,
    expires_at: SystemTime,
    rules: Vec<Rule>,
}

/// What a disposable token grants on the caches or topics it selects.
#[derive(Debug)]
struct Rule {
    role: Role,
    cache: CacheSel,
    target: Target,
}

/// What a [`Rule`] selects within a cache.
#[derive(Debug)]
enum Target {
    Items(ItemSel),
    Topics(TopicSel),
}

#[derive(Debug, Clone, Copy, Default)]
struct Role {
    read: bool,
    write: bool,
}

impl Role {
    const READ: Role = Role {
        read: true,
        write: false,
    };
    const WRITE: Role = Role {
        read: false,
        write: true,
    };
    const READ_WRITE: Role = Role {
        read: true,
        write: true,
    };

    fn union(self, other: Role) -> Role {
        Role {
            read: self.read || other.read,
            write: self.write || other.write,
        }
    }

    fn covers(self, needed: Role) -> bool {
        (self.read || !needed.read) && (self.write || !needed.write)
    }
}

#[derive(Debug)]
enum CacheSel {
    All,
    Name(String),
}

#[derive(Debug)]
enum ItemSel {
    All,
    Key(Vec<u8>),
    Prefix(Vec<u8>),
}

#[derive(Debug)]
enum TopicSel {
    All,
    Name(String),
    Prefix(String),
}

impl CacheSel {
    fn matches(&self, cache: &str) -> bool {
        match self {
            CacheSel::All => true,
            CacheSel::Name(name) => name == cache,
        }
    }
}

impl ItemSel {
    fn matches(&self, key: &[u8]) -> bool {
        match self {
            ItemSel::All => true,
            ItemSel::Key(k) => k.as_slice() == key,
            ItemSel::Prefix(p) => key.starts_with(p),
        }
    }
}

impl TopicSel {
    fn matches(&self, topic: &str) -> bool {
        match self {
            TopicSel::All => true,
            TopicSel::Name(name) => name == topic,
            TopicSel::Prefix(prefix) => topic.starts_with(prefix.as_str()),
        }
    }
}

/// A cache or topic permission's `cache` oneof (two generated enums of one
/// shape) as a [`CacheSel`]; `None` when it names no cache.
macro_rules! cache_sel {
    ($cache:expr, $permissions:ident) => {
        match $cache {
            Some($permissions::Cache::AllCaches(_)) => Some(CacheSel::All),
            Some($permissions::Cache::CacheSelector(s)) => match &s.kind {
                Some(cache_selector::Kind::CacheName(name)) => Some(CacheSel::Name(name.clone())),
                None => None,
            },
            None => None,
        }
    };
}

/// The rules `permissions` grant, or why they cannot be used.
fn rules_from(permissions: &Permissions) -> Result<Vec<Rule>, String> {
    let explicit = match &permissions.kind {
        Some(permissions::Kind::Explicit(explicit)) => explicit,
        Some(permissions::Kind::SuperUser(_)) => {
            return Err("disposable tokens cannot carry super-user permissions".into());
        }
        None => return Err("permissions are required".into()),
    };
    let mut rules = Vec::new();
    for permission in &explicit.permissions {
        let (role, what, cache, target) = match &permission.kind {
            Some(permissions_type::Kind::CachePermissions(p)) => (
                p.role,
                "cache",
                cache_sel!(&p.cache, cache_permissions),
                item_sel(p.cache_item.as_ref()).map(Target::Items),
            ),
            Some(permissions_type::Kind::TopicPermissions(p)) => (
                p.role,
                "topic",
                cache_sel!(&p.cache, topic_permissions),
                topic_sel(p.topic.as_ref()).map(Target::Topics),
            ),
            // Functions are not served here: such a permission grants nothing.
            Some(permissions_type::Kind::FunctionPermissions(_)) => continue,
            None => return Err("a permission is empty".into()),
        };
        let Some(role) = granted_role(role, what)? else {
            continue;
        };
        let cache = cache.ok_or_else(|| format!("a {what} permission names no cache"))?;
        rules.push(Rule {
            role,
            cache,
            target: target?,
        });
    }
    Ok(rules)
}

/// What a cache or topic permission's role grants: `None` for "permit
/// none". `CacheRole` and `TopicRole` number their roles alike (a test
/// checks), so topic roles are read as cache roles.
fn granted_role(role: i32, what: &str) -> Result<Option<Role>, String> {
    match CacheRole::try_from(role) {
        Ok(CacheRole::CachePermitNone) => Ok(None),
        Ok(CacheRole::CacheReadWrite) => Ok(Some(Role::READ_WRITE)),
        Ok(CacheRole::CacheReadOnly) => Ok(Some(Role::READ)),
        Ok(CacheRole::CacheWriteOnly) => Ok(Some(Role::WRITE)),
        Err(_) => Err(format!("unknown {what} role {role}")),
    }
}

/// The items a cache permission covers; permissions without an item
/// selector cover the whole cache.
fn item_sel(item: Option<&cache_permissions::CacheItem>) -> Result<ItemSel, String> {
    match item {
        None | Some(cache_permissions::CacheItem::AllItems(_)) => Ok(ItemSel::All),
        Some(cache_permissions::CacheItem::ItemSelector(s)) => match &s.kind {
            Some(cache_item_selector::Kind::Key(key)) => Ok(ItemSel::Key(key.clone())),
            Some(cache_item_selector::Kind::KeyPrefix(prefix)) => {
                Ok(ItemSel::Prefix(prefix.clone()))
            }
            None => Err("a cache item selector names no key".into()),
        },
    }
}

/// The topics a topic permission covers.
fn topic_sel(topic: Option<&topic_permissions::Topic>) -> Result<TopicSel, String> {
    match topic {
        Some(topic_permissions::Topic::AllTopics(_)) => Ok(TopicSel::All),
        Some(topic_permissions::Topic::TopicSelector(s)) => match &s.kind {
            Some(topic_selector::Kind::TopicName(name)) => Ok(TopicSel::Name(name.clone())),
            Some(topic_selector::Kind::TopicNamePrefix(prefix)) => {
                Ok(TopicSel::Prefix(prefix.clone()))
            }
            None => Err("a topic permission names no topic".into()),
        },
        None => Err("a topic permission names no topic".into()),
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub(super) enum Caller {
    /// An accepted API key: may do everything.
    ApiKey,
    /// A disposable token: may do what it grants, until it expires.
    Token(Arc<Grant>),
}

/// What a topic call needs.
#[derive(Debug, Clone, Copy)]
pub(super) enum TopicAccess {
    Publish,
    Subscribe,
}

/// What a cache item call needs.
#[derive(Debug, Clone, Copy)]
pub(super) enum ItemAccess {
    Read,
    Write,
    /// Both, for calls that change an item and return it (`Increment`).
    ReadWrite,
}

impl Caller {
    /// The caller that [`Authenticate`] put on `request`.
    ///
    /// # Errors
    /// `INTERNAL` if the service was mounted without [`Authenticate`].
    pub(super) fn of<T>(request: &Request<T>) -> Result<Caller, Status> {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| Status::internal("momento-local: request was not authenticated"))
    }

    /// The `publisher_id` subscribers see for messages this caller
    /// publishes: a disposable token's id, empty for API keys.
    pub(super) fn publisher_id(&self) -> &str {
        match self {
            Caller::ApiKey => "",
            Caller::Token(grant) => &grant.publisher_id,
        }
    }

    /// When the caller's credential stops being valid.
    pub(super) fn expires_at(&self) -> Option<SystemTime> {
        match self {
            Caller::ApiKey => None,
            Caller::Token(grant) => Some(grant.expires_at),
        }
    }

    /// Allows only API keys: control-plane calls and minting tokens.
    ///
    /// # Errors
    /// `PERMISSION_DENIED` for a disposable token.
    pub(super) fn require_api_key(&self, action: &str) -> Result<(), Status> {
        match self {
            Caller::ApiKey => Ok(()),
            Caller::Token(_) => Err(Status::permission_denied(format!(
                "a disposable token cannot {action}; use an API key"
            ))),
        }
    }

    /// # Errors
    /// `PERMISSION_DENIED` unless the token grants `access` to `topic`.
    pub(super) fn require_topic(
        &self,
        cache: &str,
        topic: &str,
        access: TopicAccess,
    ) -> Result<(), Status> {
        let (needed, verb) = match access {
            TopicAccess::Publish => (Role::WRITE, "publish to"),
            TopicAccess::Subscribe => (Role::READ, "subscribe to"),
        };
        let selects = |target: &Target| matches!(target, Target::Topics(t) if t.matches(topic));
        self.require(cache, selects, needed, || {
            format!("{verb} topic {topic:?} in cache {cache:?}")
        })
    }

    /// # Errors
    /// `PERMISSION_DENIED` unless the token grants `access` to `key`.
    pub(super) fn require_item(
        &self,
        cache: &str,
        key: &[u8],
        access: ItemAccess,
    ) -> Result<(), Status> {
        let (needed, verb) = match access {
            ItemAccess::Read => (Role::READ, "read"),
            ItemAccess::Write => (Role::WRITE, "write"),
            ItemAccess::ReadWrite => (Role::READ_WRITE, "read and write"),
        };
        let selects = |target: &Target| matches!(target, Target::Items(i) if i.matches(key));
        self.require(cache, selects, needed, || {
            format!(
                "{verb} key {:?} in cache {cache:?}",
                String::from_utf8_lossy(key)
            )
        })
    }

    /// Allows API keys, and tokens whose rules for `cache` and what
    /// `selects` picks grant together at least `needed`.
    ///
    /// # Errors
    /// `PERMISSION_DENIED` saying the token may not do `what()`.
    fn require(
        &self,
        cache: &str,
        selects: impl Fn(&Target) -> bool,
        needed: Role,
        what: impl FnOnce() -> String,
    ) -> Result<(), Status> {
        let Caller::Token(grant) = self else {
            return Ok(());
        };
        let granted = grant
            .rules
            .iter()
            .filter(|rule| rule.cache.matches(cache) && selects(&rule.target))
            .map(|rule| rule.role)
            .fold(Role::default(), Role::union);
        if granted.covers(needed) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "this disposable token may not {}",
                what()
            )))
        }
    }
}

/// Authenticates every call and puts the [`Caller`] on the request, so
/// handlers check permissions against what they are asked to touch.
#[derive(Debug, Clone)]
pub(super) struct Authenticate {
    authority: Arc<Authority>,
}

impl Authenticate {
    pub(super) fn new(authority: Arc<Authority>) -> Self {
        Self { authority }
    }
}

impl Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let credential = match request.metadata().get("authorization") {
            Some(value) => Some(value.to_str().map_err(|_| {
                Status::unauthenticated("the authorization header is not printable ASCII")
            })?),
            None => None,
        };
        let caller = self.authority.authenticate(credential)?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// `token.Token`: mints disposable tokens for API-key holders.
#[derive(Debug)]
pub(super) struct TokenService {
    authority: Arc<Authority>,
}

impl TokenService {
    pub(super) fn new(authority: Arc<Authority>) -> Self {
        Self { authority }
    }
}

#[tonic::async_trait]
impl Token for TokenService {
    async fn generate_disposable_token(
        &self,
        request: Request<GenerateDisposableTokenRequest>,
    ) -> Result<Response<GenerateDisposableTokenResponse>, Status> {
        const ACTION: &str = "generate disposable tokens";
        Caller::of(&request)?.require_api_key(ACTION)?;
        let body = request.into_inner();
        // The SDKs also send their key in the body; it must be a key too.
        if !body.auth_token.is_empty() {
            self.authority
                .authenticate(Some(&body.auth_token))?
                .require_api_key(ACTION)?;
        }
        self.authority.mint(body).map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use momento_protos::permission_messages::{CacheRole, TopicRole};

    #[test]
    fn cache_and_topic_roles_are_numbered_alike() {
        let pairs = [
            (CacheRole::CachePermitNone, TopicRole::TopicPermitNone),
            (CacheRole::CacheReadWrite, TopicRole::TopicReadWrite),
            (CacheRole::CacheReadOnly, TopicRole::TopicReadOnly),
            (CacheRole::CacheWriteOnly, TopicRole::TopicWriteOnly),
        ];
        for (cache, topic) in pairs {
            assert_eq!(cache as i32, topic as i32, "{cache:?} vs {topic:?}");
        }
    }
}
