//! The client side of SCRAM-SHA-256 (RFC 5802, RFC 7677) without channel binding (`n,,`).
//!
//! Pure functions, no I/O: the login code sends and receives the messages. The salted password
//! is the expensive part (PBKDF2), so it is computed separately and can be cached per user.

use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// A server asking for more than this many PBKDF2 iterations is refused.
pub const MAX_ITERATIONS: u32 = 1_000_000;

const GS2_HEADER: &str = "n,,";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScramError {
    /// The server-first message lacks `r=`, `s=` or `i=`, or they are invalid.
    MalformedServerFirst,
    /// The server's nonce does not extend ours.
    NonceMismatch,
    /// Iteration count of zero or above [`MAX_ITERATIONS`].
    Iterations(u32),
    /// The server-final message carries an error (`e=`) or no verifier.
    ServerError(String),
    /// The server's signature is wrong: it does not know our credentials.
    BadServerSignature,
}

impl fmt::Display for ScramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScramError::MalformedServerFirst => f.write_str("malformed server-first message"),
            ScramError::NonceMismatch => f.write_str("server nonce does not extend ours"),
            ScramError::Iterations(i) => write!(f, "unacceptable iteration count {i}"),
            ScramError::ServerError(e) => write!(f, "server-final error {e}"),
            ScramError::BadServerSignature => f.write_str("bad server signature"),
        }
    }
}

/// State between our first message and the server's first message.
#[derive(Debug, Clone)]
pub struct ClientFirst {
    bare: String,
    nonce: String,
}

impl ClientFirst {
    /// `nonce` must be fresh and printable without commas (base64 of random bytes is).
    pub fn new(username: &str, nonce: &str) -> ClientFirst {
        let user = username.replace('=', "=3D").replace(',', "=2C");
        ClientFirst {
            bare: format!("n={user},r={nonce}"),
            nonce: nonce.to_string(),
        }
    }

    /// The client-first message to send in `<auth>`.
    pub fn message(&self) -> String {
        format!("{GS2_HEADER}{}", self.bare)
    }
}

/// The parsed server-first message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFirst {
    raw: String,
    nonce: String,
    pub salt: Vec<u8>,
    pub iterations: u32,
}

impl ServerFirst {
    pub fn parse(first: &ClientFirst, raw: &str) -> Result<ServerFirst, ScramError> {
        let (mut nonce, mut salt, mut iterations) = (None, None, None);
        for part in raw.split(',') {
            match part.split_once('=') {
                Some(("r", v)) => nonce = Some(v),
                Some(("s", v)) => salt = B64.decode(v).ok(),
                Some(("i", v)) => iterations = v.parse::<u32>().ok(),
                _ => {}
            }
        }
        let (Some(nonce), Some(salt), Some(iterations)) = (nonce, salt, iterations) else {
            return Err(ScramError::MalformedServerFirst);
        };
        if !nonce.starts_with(&first.nonce) || nonce.len() == first.nonce.len() {
            return Err(ScramError::NonceMismatch);
        }
        if iterations == 0 || iterations > MAX_ITERATIONS {
            return Err(ScramError::Iterations(iterations));
        }
        Ok(ServerFirst {
            raw: raw.to_string(),
            nonce: nonce.to_string(),
            salt,
            iterations,
        })
    }
}

/// `Hi(password, salt, i)`: PBKDF2-HMAC-SHA256. The password is used as given (no SASLprep;
/// ASCII passwords are unaffected).
pub fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2::<HmacSha256>(password.as_bytes(), salt, iterations, &mut out)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    out
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The client-final message, and the server signature the server-final must carry.
#[derive(Debug, Clone)]
pub struct ClientFinal {
    pub message: String,
    server_signature: [u8; 32],
}

impl ClientFinal {
    pub fn new(first: &ClientFirst, server: &ServerFirst, salted: &[u8; 32]) -> ClientFinal {
        let channel_binding = B64.encode(GS2_HEADER);
        let without_proof = format!("c={channel_binding},r={}", server.nonce);
        let auth_message = format!("{},{},{without_proof}", first.bare, server.raw);
        let client_key = hmac(salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let client_signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(client_signature.iter())
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = hmac(salted, b"Server Key");
        ClientFinal {
            message: format!("{without_proof},p={}", B64.encode(proof)),
            server_signature: hmac(&server_key, auth_message.as_bytes()),
        }
    }

    /// Check the server-final message (`v=...`).
    pub fn verify(&self, server_final: &str) -> Result<(), ScramError> {
        let mut verifier = None;
        for part in server_final.split(',') {
            match part.split_once('=') {
                Some(("e", e)) => return Err(ScramError::ServerError(e.to_string())),
                Some(("v", v)) => verifier = B64.decode(v).ok(),
                _ => {}
            }
        }
        match verifier {
            Some(v) if v == self.server_signature => Ok(()),
            Some(_) => Err(ScramError::BadServerSignature),
            None => Err(ScramError::ServerError("no verifier".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example exchange of RFC 7677 §3.
    #[test]
    fn rfc7677_example() {
        let first = ClientFirst::new("user", "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(first.message(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server = ServerFirst::parse(
            &first,
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        )
        .unwrap();
        assert_eq!(server.iterations, 4096);
        let salted = salted_password("pencil", &server.salt, server.iterations);
        let fin = ClientFinal::new(&first, &server, &salted);
        assert_eq!(
            fin.message,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        assert_eq!(
            fin.verify("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
            Ok(())
        );
        assert_eq!(
            fin.verify("v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
            Err(ScramError::BadServerSignature)
        );
        assert_eq!(
            fin.verify("e=invalid-proof"),
            Err(ScramError::ServerError("invalid-proof".into()))
        );
    }

    #[test]
    fn server_first_is_checked() {
        let first = ClientFirst::new("u", "abc");
        let parse = |s: &str| ServerFirst::parse(&first, s);
        assert_eq!(
            parse("r=abc,s=AAAA,i=1").err(),
            Some(ScramError::NonceMismatch)
        );
        assert_eq!(
            parse("r=xyz1,s=AAAA,i=1").err(),
            Some(ScramError::NonceMismatch)
        );
        assert_eq!(
            parse("r=abc1,s=AAAA,i=0").err(),
            Some(ScramError::Iterations(0))
        );
        assert_eq!(
            parse("r=abc1,s=!!,i=1").err(),
            Some(ScramError::MalformedServerFirst)
        );
        assert_eq!(
            parse("r=abc1,i=1").err(),
            Some(ScramError::MalformedServerFirst)
        );
        assert!(parse("r=abc1,s=AAAA,i=4096").is_ok());
    }

    #[test]
    fn username_is_escaped() {
        assert_eq!(
            ClientFirst::new("a,b=c", "n").message(),
            "n,,n=a=2Cb=3Dc,r=n"
        );
    }
}
