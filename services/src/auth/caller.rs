//! Who is calling: put on every authenticated request by the auth layer.

use std::time::SystemTime;

use tonic::Request;

use super::{
    AuthError,
    scope::{Scope, Scopes},
};

/// The authenticated caller of a request, as a request extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Whom the token was issued to; orders belong to this subject.
    pub subject: String,
    /// The token's id (`jti`), or `"api-key"` for the admin key.
    pub token_id: String,
    /// What the caller may do.
    pub scopes: Scopes,
    /// When the credential stops being valid (`None`: the API key, no expiry).
    pub expires_at: Option<SystemTime>,
}

impl Caller {
    /// The caller of `request`.
    ///
    /// # Errors
    /// [`AuthError::Missing`] when no auth layer put a caller on the request.
    pub fn of<T>(request: &Request<T>) -> Result<&Caller, AuthError> {
        request
            .extensions()
            .get::<Caller>()
            .ok_or(AuthError::Missing)
    }

    /// The caller of `request`, checked for the argument-less `scope`.
    ///
    /// # Errors
    /// As [`of`](Self::of), then as [`require`](Self::require).
    pub fn with_scope<'r, T>(
        request: &'r Request<T>,
        scope: &Scope,
    ) -> Result<&'r Caller, AuthError> {
        let caller = Self::of(request)?;
        caller.require(scope)?;
        Ok(caller)
    }

    /// Checks an argument-less scope.
    ///
    /// # Errors
    /// [`AuthError::PermissionDenied`] naming the missing scope.
    pub fn require(&self, scope: &Scope) -> Result<(), AuthError> {
        if self.scopes.has(scope) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied(format!(
                "this token lacks the {scope} scope"
            )))
        }
    }

    /// Checks that rates of every symbol in `symbols` may be read.
    ///
    /// # Errors
    /// [`AuthError::PermissionDenied`] naming the first symbol outside the
    /// token's scope.
    pub fn require_subscribe<'a>(
        &self,
        symbols: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), AuthError> {
        for symbol in symbols {
            if !self.scopes.may_subscribe(symbol) {
                return Err(AuthError::PermissionDenied(format!(
                    "this token may not read rates of {symbol} (needs rates:subscribe={symbol} or rates:subscribe=*)"
                )));
            }
        }
        Ok(())
    }
}
