//! Cost of authenticating one request: verifying a token and checking the
//! `authorization` header as the auth layer does on every call. `verify`
//! and `authenticate_header` repeat one token, so they time the usual case:
//! a token already verified once, checked for revocation and expiry only.
//! `reject_bad_signature` times the whole check (signature, expiry,
//! revocation, scopes), which a forged token never gets past.
//!
//! `cargo bench -p fxcast-benches --bench tokens`

#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use fxcast_services::auth::{AuthConfig, TokenAuthority};

fn tokens(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let authority = TokenAuthority::open(dir.path(), AuthConfig::default()).expect("authority");
    let scopes = "rates:subscribe=USD_JPY,EUR_USD orders:place orders:read"
        .parse()
        .expect("scopes");
    let token = authority.issue("alice", scopes, None).expect("token").token;
    let header = format!("Bearer {token}");

    let mut group = c.benchmark_group("token");
    group.bench_function("verify", |b| {
        b.iter(|| authority.verify(black_box(&token)).expect("valid"))
    });
    group.bench_function("authenticate_header", |b| {
        b.iter(|| {
            authority
                .authenticate(black_box(Some(header.as_str())), false)
                .expect("valid")
        })
    });
    group.bench_function("reject_bad_signature", |b| {
        let mut forged = token.clone();
        forged.pop();
        forged.push(if token.ends_with('A') { 'B' } else { 'A' });
        b.iter(|| authority.verify(black_box(&forged)).expect_err("forged"))
    });
    group.bench_function("issue", |b| {
        b.iter(|| {
            authority
                .issue("alice", "orders:place".parse().expect("scope"), None)
                .expect("token")
        })
    });
    group.finish();
}

criterion_group!(benches, tokens);
criterion_main!(benches);
