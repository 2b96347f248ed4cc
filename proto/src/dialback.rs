//! Server Dialback keys (XEP-0185): `HMAC-SHA256(SHA256(secret), receiving + ' ' + originating
//! + ' ' + stream id)`, hex-encoded. A server can check a key it issued without remembering it.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The dialback key for a stream `stream_id` from `originating` to `receiving`.
pub fn key(secret: &[u8], receiving: &str, originating: &str, stream_id: &str) -> String {
    let hashed = hex(&Sha256::digest(secret));
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(hashed.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(receiving.as_bytes());
    mac.update(b" ");
    mac.update(originating.as_bytes());
    mac.update(b" ");
    mac.update(stream_id.as_bytes());
    hex(&mac.finalize().into_bytes())
}

/// Whether `candidate` is the key we would issue (compared in constant time).
pub fn verify(
    secret: &[u8],
    receiving: &str,
    originating: &str,
    stream_id: &str,
    candidate: &str,
) -> bool {
    let expected = key(secret, receiving, originating, stream_id);
    let candidate = candidate.trim().to_ascii_lowercase();
    if expected.len() != candidate.len() {
        return false;
    }
    expected
        .bytes()
        .zip(candidate.bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}
