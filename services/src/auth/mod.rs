//! Authentication and authorisation: scopes, the caller of a request.

mod caller;
mod scope;

pub use caller::Caller;
pub use scope::{ParseScopeError, Scope, Scopes, SymbolSet};
