//! Anonymous browser tokens: what they carry and how often one address may
//! get one. Shared by `TokenService` (gRPC) and the gateway (`POST /v1/tokens`).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use rand::{RngCore, SeedableRng, rngs::StdRng};

use super::{Scope, Scopes, SymbolSet};

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
pub fn anonymous_subject() -> String {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let mut id = [0u8; 9];
    StdRng::from_os_rng().fill_bytes(&mut id);
    format!("anon-{}", URL_SAFE_NO_PAD.encode(id))
}

/// At most `per_minute` events per client address in any fixed minute window.
#[derive(Debug)]
pub struct PerAddressLimit {
    per_minute: u32,
    counts: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl PerAddressLimit {
    /// A limit of `per_minute` per address.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one event for `ip`.
    ///
    /// # Errors
    /// `RESOURCE_EXHAUSTED` naming the address and the limit once it is used up.
    pub fn check(&self, ip: IpAddr) -> Result<(), tonic::Status> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        // Forget finished windows so the map stays bounded by active clients.
        counts.retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(60));
        let entry = counts.entry(ip).or_insert((now, 0));
        if entry.1 >= self.per_minute {
            return Err(tonic::Status::resource_exhausted(format!(
                "too many anonymous tokens for {ip}: at most {} per minute",
                self.per_minute
            )));
        }
        entry.1 += 1;
        Ok(())
    }
}
