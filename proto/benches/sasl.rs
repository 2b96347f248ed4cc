//! One SCRAM-SHA-256 login as the server sees it: client-first → server-first → client-final
//! → server-final, against stored credentials. The client side uses a precomputed ClientKey
//! (as a real client caches its salted password), so the figure is the server's cost; the
//! PBKDF2 a client without a cache pays is measured separately.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use criterion::{criterion_group, criterion_main, Criterion};
use proto::sasl::{
    Authenticator, ChannelBinding, CredentialLookup, SaslStep, StoredCredentials,
    DEFAULT_ITERATIONS,
};
use sha2::{Digest, Sha256};

struct Accounts(HashMap<String, StoredCredentials>);
impl CredentialLookup for Accounts {
    fn credentials(&self, username: &str) -> Option<StoredCredentials> {
        self.0.get(username).cloned()
    }
}

fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize()
        .to_vec()
}

fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut first = salt.to_vec();
    first.extend_from_slice(&[0, 0, 0, 1]);
    let mut u = hmac(password, &first);
    let mut out = u.clone();
    for _ in 1..iterations {
        u = hmac(password, &u);
        out.iter_mut().zip(&u).for_each(|(o, x)| *o ^= x);
    }
    out
}

fn login(auth: &Authenticator, client_key: &[u8]) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let client_first_bare = "n=juliet,r=fyko+d2lbbFgONRv9qkxdawL";
    let mut ex = auth
        .start("SCRAM-SHA-256", true, ChannelBinding::default())
        .expect("mechanism");
    let server_first = match ex.step(Some(format!("n,,{client_first_bare}").as_bytes())) {
        SaslStep::Challenge(c) => String::from_utf8(c).expect("utf8"),
        other => panic!("{other:?}"),
    };
    let nonce = server_first
        .split(',')
        .find_map(|f| f.strip_prefix("r="))
        .expect("nonce");
    let without_proof = format!("c=biws,r={nonce}");
    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
    let stored_key = Sha256::digest(client_key);
    let signature = hmac(&stored_key, auth_message.as_bytes());
    let proof: Vec<u8> = client_key
        .iter()
        .zip(&signature)
        .map(|(a, b)| a ^ b)
        .collect();
    let client_final = format!("{without_proof},p={}", b64.encode(proof));
    match ex.step(Some(client_final.as_bytes())) {
        SaslStep::Success { .. } => {}
        other => panic!("login failed: {other:?}"),
    }
}

fn scram(c: &mut Criterion) {
    let creds = StoredCredentials::derive("pencil", DEFAULT_ITERATIONS).expect("derive");
    let salted = salted_password(b"pencil", &creds.sha256.salt, DEFAULT_ITERATIONS);
    let client_key = hmac(&salted, b"Client Key");
    let mut accounts = HashMap::new();
    accounts.insert("juliet".to_string(), creds.clone());
    let auth = Authenticator::new(Arc::new(Accounts(accounts)), [5; 32]).expect("authenticator");
    c.bench_function("scram_sha256_login_server_side", |b| {
        b.iter(|| login(&auth, &client_key))
    });
    c.bench_function("pbkdf2_sha256_4096_client_side", |b| {
        b.iter(|| salted_password(b"pencil", &creds.sha256.salt, DEFAULT_ITERATIONS))
    });
}

criterion_group!(benches, scram);
criterion_main!(benches);
