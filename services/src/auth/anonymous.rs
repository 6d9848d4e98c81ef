//! Anonymous browser tokens: what they carry and how often one address may
//! get one. Shared by `TokenService` (gRPC) and the gateway (`POST /v1/tokens`).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use rand::{RngCore, SeedableRng, rngs::StdRng};

use super::{AuthError, Scope, Scopes, SymbolSet};

/// The one policy for anonymous browser tokens, applied by `TokenService`
/// and by the gateway's `POST /v1/tokens` alike (each edge decides only
/// whether anonymous tokens are on there): at most `per_minute` per client
/// address, a fresh subject each, browser scopes, a short life.
#[derive(Debug)]
pub struct AnonymousPolicy {
    ttl: Duration,
    limit: PerAddressLimit,
}

/// What an anonymous browser token is issued with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnonymousGrant {
    /// `anon-<random>`.
    pub subject: String,
    /// [`browser_scopes`].
    pub scopes: Scopes,
    /// The token's lifetime.
    pub ttl: Duration,
}

impl AnonymousPolicy {
    /// Tokens of `ttl`, at most `per_minute` per client address.
    pub fn new(ttl: Duration, per_minute: u32) -> Self {
        Self {
            ttl,
            limit: PerAddressLimit::new(per_minute),
        }
    }

    /// A token for the browser at `client`, counted against its limit.
    ///
    /// # Errors
    /// [`AuthError::TooManyAnonymous`] once the address used up its minute.
    pub fn grant(&self, client: IpAddr) -> Result<AnonymousGrant, AuthError> {
        self.limit.check(client)?;
        Ok(AnonymousGrant {
            subject: anonymous_subject(),
            scopes: browser_scopes(),
            ttl: self.ttl,
        })
    }
}

/// Scopes of an anonymous browser token: watch every rate, place and read
/// its own orders. Never publish, never issue.
pub fn browser_scopes() -> Scopes {
    Scopes(vec![
        Scope::RatesSubscribe(SymbolSet::All),
        Scope::OrdersPlace,
        Scope::OrdersRead,
    ])
}

/// A fresh subject for one browser, `anon-<random>`.
fn anonymous_subject() -> String {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let mut id = [0u8; 9];
    StdRng::from_os_rng().fill_bytes(&mut id);
    format!("anon-{}", URL_SAFE_NO_PAD.encode(id))
}

/// At most `per_minute` events per client address in any fixed minute window.
#[derive(Debug)]
struct PerAddressLimit {
    per_minute: u32,
    counts: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl PerAddressLimit {
    /// A limit of `per_minute` per address.
    fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one event for `ip`.
    ///
    /// # Errors
    /// [`AuthError::TooManyAnonymous`] naming the address and the limit once
    /// it is used up.
    fn check(&self, ip: IpAddr) -> Result<(), AuthError> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        // Forget finished windows so the map stays bounded by active clients.
        counts.retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(60));
        let entry = counts.entry(ip).or_insert((now, 0));
        if entry.1 >= self.per_minute {
            return Err(AuthError::TooManyAnonymous {
                client: ip,
                per_minute: self.per_minute,
            });
        }
        entry.1 += 1;
        Ok(())
    }
}
