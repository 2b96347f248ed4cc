//! Node secrets a cluster's nodes must share, derived from `cluster.secret`.
//!
//! The fake-SCRAM secret (the salt an unknown user is shown) and the dialback secret (XEP-0185
//! keys) must be the same on every node: a client that asks two nodes about one unknown name
//! must see one salt, or it learns the name has no account; a `db:verify` for a key one node
//! made may be answered by another. A single node keeps the random secret it stored on first
//! start. Each secret is HKDF-SHA256 (RFC 5869) of the cluster secret with its own label, so
//! knowing one derived secret (a dialback key leaks HMACs made with it) tells nothing about the
//! cluster secret or the other derived secrets.

use ring::hkdf;

/// HKDF salt: fixed, since the input is already a secret and the labels separate the uses.
const SALT: &[u8] = b"switchboard cluster secrets v1";
/// Label of the secret that seeds fake SCRAM credentials (`proto::sasl`).
pub const SCRAM_FAKE: &str = "scram-fake-secret";
/// Label of the XEP-0185 dialback secret.
pub const DIALBACK: &str = "dialback-secret";

struct Len32;
impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

/// The 32-byte secret named `label`, the same on every node holding `cluster_secret`.
pub fn derive(cluster_secret: &str, label: &str) -> [u8; 32] {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(cluster_secret.as_bytes());
    let info = [b"switchboard node secret ".as_slice(), label.as_bytes()];
    let mut out = [0u8; 32];
    // Expand fails only for an output longer than 255 blocks; 32 bytes is one.
    if let Ok(okm) = prk.expand(&info, Len32) {
        let _ = okm.fill(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_secret_same_value_labels_separate() {
        let a = derive("cluster-secret-0123456789", SCRAM_FAKE);
        assert_eq!(a, derive("cluster-secret-0123456789", SCRAM_FAKE));
        assert_ne!(a, derive("cluster-secret-0123456789", DIALBACK));
        assert_ne!(a, derive("cluster-secret-0123456780", SCRAM_FAKE));
        assert_ne!(a, [0u8; 32]);
    }
}
