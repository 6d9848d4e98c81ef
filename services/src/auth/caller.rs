//! Who is calling: put on every authenticated request by the auth layer.

use std::time::SystemTime;

use tonic::{Request, Status};

use super::scope::{Scope, Scopes};

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
    /// `UNAUTHENTICATED` when no auth layer put a caller on the request.
    pub fn of<T>(request: &Request<T>) -> Result<&Caller, Status> {
        request.extensions().get::<Caller>().ok_or_else(|| {
            Status::unauthenticated("missing credentials: send `authorization: Bearer <token>`")
        })
    }

    /// Checks an argument-less scope.
    ///
    /// # Errors
    /// `PERMISSION_DENIED` naming the missing scope.
    pub fn require(&self, scope: &Scope) -> Result<(), Status> {
        if self.scopes.has(scope) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "this token lacks the {scope} scope"
            )))
        }
    }

    /// Checks that rates of every symbol in `symbols` may be read.
    ///
    /// # Errors
    /// `PERMISSION_DENIED` naming the first symbol outside the token's scope.
    pub fn require_subscribe<'a>(
        &self,
        symbols: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), Status> {
        for symbol in symbols {
            if !self.scopes.may_subscribe(symbol) {
                return Err(Status::permission_denied(format!(
                    "this token may not read rates of {symbol} (needs rates:subscribe={symbol} or rates:subscribe=*)"
                )));
            }
        }
        Ok(())
    }
}
