//! Authentication and authorisation.
//!
//! - [`TokenAuthority`]: issues HS256 JWTs (subject, scopes, id, expiry, key
//!   id), verifies them statelessly (plus an in-memory revocation check), and
//!   checks the admin API key.
//! - [`AuthLayer`]: one tower layer over every gRPC service; it puts the
//!   [`Caller`] on each request, or answers `UNAUTHENTICATED` itself.
//! - [`Caller`], [`Scope`], [`Scopes`]: what a handler checks.
//! - `TokenServiceImpl`: `fxcast.v1.TokenService`.
//! - `shared`: revocations announced to and retained for other servers.

mod anonymous;
mod authority;
mod caller;
pub mod keys;
mod layer;
mod revocations;
mod scope;
mod service;
mod shared;

pub use anonymous::{AnonymousGrant, AnonymousPolicy, browser_scopes};
pub use authority::{
    API_KEY_ID, AuthConfig, AuthError, CredentialEnd, IssuedToken, REVOCATIONS_TOPIC,
    TokenAuthority, api_key_path, issue_offline, validate_subject,
};
pub(crate) use authority::{StreamEnd, unless_ended};
pub use caller::Caller;
pub use layer::{AuthLayer, AuthService};
pub use revocations::{Revoked, until_revoked};
pub use scope::{ParseScopeError, Scope, Scopes, SymbolSet};
pub use service::TokenServiceImpl;
pub use shared::{RevocationMessage, load_retained_revocations, start_following};
