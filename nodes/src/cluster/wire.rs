//! NodeLink wire format: the handshake that proves both ends hold the cluster secret, and the
//! sealed records every frame after it travels in.
//!
//! Handshake (plaintext JSON frames, each a 4-byte big-endian length and at most
//! [`HANDSHAKE_FRAME_BYTES`]):
//!
//! 1. dialer → acceptor `Hello { node: d, nonce: n1 }`
//! 2. acceptor → dialer `Challenge { node: a, nonce: n2 }`: no proof yet
//! 3. dialer → acceptor `Proof { HMAC-SHA256(secret, "dialer d a n1 n2") }`
//! 4. acceptor checks it; if wrong it closes the connection having sent nothing but its nonce,
//!    so a dialer without the secret gets no MAC it could replay or test guesses against.
//!    Otherwise → dialer `Accepted { HMAC-SHA256(secret, "acceptor d a n1 n2") }`, which the
//!    dialer checks (it may have dialled an impostor).
//!
//! Then each direction gets its own ChaCha20-Poly1305 key (RFC 8439): HKDF-SHA256 (RFC 5869)
//! of the cluster secret, salted with both nonces, with the direction and both node ids as
//! info. Fresh nonces on both sides make the keys fresh per connection; the proofs alone give
//! a man in the middle nothing, since it cannot derive the keys.
//!
//! Records: a 4-byte big-endian length L, then L bytes of ciphertext and tag, with the length
//! as associated data. The nonce is a per-direction record counter (never sent), so a record
//! replayed, dropped, reordered or altered fails to open and the connection is closed: after
//! that nothing it carries can be trusted. The plaintext is one flag byte (more parts follow,
//! or this is the last) and at most [`RECORD_BYTES`] of a message. A message (one JSON frame)
//! is cut into as many records as it needs, so a large reply travels in chunks and no record
//! makes the reader allocate more than [`RECORD_BYTES`] before it was authenticated. A message
//! over `cluster.max_frame_bytes` is refused by its sender (see `link.rs`); one a broken peer
//! sends anyway is read to its end, its parts dropped as they come, and skipped.

use std::sync::Arc;

use hmac::{Hmac, Mac};
use ring::{aead, hkdf};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::messages::Frame;
use super::routing_table::NodeId;

/// Largest handshake frame: they hold a node id, a nonce or a MAC, so anything bigger is not
/// a peer; the bound keeps an unauthenticated connection from making the node allocate.
pub const HANDSHAKE_FRAME_BYTES: usize = 1024;
/// Largest slice of a message in one sealed record.
pub const RECORD_BYTES: usize = 64 * 1024;
const TAG_BYTES: usize = 16;
/// The flag byte, the data, the tag.
const MAX_SEALED: usize = 1 + RECORD_BYTES + TAG_BYTES;
const NONCE_HEX: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Json(#[from] serde_json::Error),
    #[error("handshake: {0}")]
    Handshake(&'static str),
    #[error("handshake timed out")]
    HandshakeTimeout,
    #[error("record of {0} bytes is not a sealed record")]
    BadRecord(usize),
    #[error("record failed authentication (altered, replayed or out of order)")]
    Unauthentic,
    #[error("record counter exhausted")]
    Exhausted,
}

/// The shared secret and the proofs made with it.
#[derive(Clone)]
pub struct LinkSecret(Arc<Vec<u8>>);

impl LinkSecret {
    pub fn new(secret: &str) -> Self {
        LinkSecret(Arc::new(secret.as_bytes().to_vec()))
    }

    fn mac(
        &self,
        role: &str,
        dialer: NodeId,
        acceptor: NodeId,
        n1: &str,
        n2: &str,
    ) -> Option<Hmac<Sha256>> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).ok()?;
        mac.update(format!("switchboard-nodelink {role} {dialer} {acceptor} {n1} {n2}").as_bytes());
        Some(mac)
    }

    fn proof(&self, role: &str, dialer: NodeId, acceptor: NodeId, n1: &str, n2: &str) -> String {
        // HMAC takes keys of any length, so `mac` always gives one.
        self.mac(role, dialer, acceptor, n1, n2)
            .map(|m| hex(&m.finalize().into_bytes()))
            .unwrap_or_default()
    }

    fn verify(
        &self,
        role: &str,
        dialer: NodeId,
        acceptor: NodeId,
        n1: &str,
        n2: &str,
        proof: &str,
    ) -> bool {
        match (self.mac(role, dialer, acceptor, n1, n2), unhex(proof)) {
            (Some(mac), Some(bytes)) => mac.verify_slice(&bytes).is_ok(),
            _ => false,
        }
    }

    /// The two record keys of a connection: (dialer → acceptor, acceptor → dialer).
    fn record_keys(
        &self,
        dialer: NodeId,
        acceptor: NodeId,
        n1: &str,
        n2: &str,
    ) -> Result<(RecordKey, RecordKey), WireError> {
        let salt = format!("switchboard-nodelink v1 {n1} {n2}");
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt.as_bytes()).extract(&self.0);
        let ids = format!(" {dialer} {acceptor}");
        let key = |direction: &[u8]| -> Result<RecordKey, WireError> {
            let info = [direction, ids.as_bytes()];
            let okm = prk
                .expand(&info, &aead::CHACHA20_POLY1305)
                .map_err(|_| WireError::Handshake("key derivation failed"))?;
            Ok(RecordKey {
                key: aead::LessSafeKey::new(aead::UnboundKey::from(okm)),
                counter: 0,
            })
        };
        Ok((key(b"dialer-to-acceptor")?, key(b"acceptor-to-dialer")?))
    }
}

fn nonce() -> String {
    hex(&rand::random::<[u8; 16]>())
}

fn is_nonce(n: &str) -> bool {
    n.len() == NONCE_HEX && n.bytes().all(|b| b.is_ascii_hexdigit())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// One direction's key and record counter (the AEAD nonce).
struct RecordKey {
    key: aead::LessSafeKey,
    counter: u64,
}

impl RecordKey {
    fn next_nonce(&mut self) -> Result<aead::Nonce, WireError> {
        let n = self.counter;
        // 2^64 records is beyond any link's life; refusing beats reusing a nonce.
        self.counter = n.checked_add(1).ok_or(WireError::Exhausted)?;
        let mut bytes = [0u8; aead::NONCE_LEN];
        bytes[aead::NONCE_LEN - 8..].copy_from_slice(&n.to_be_bytes());
        Ok(aead::Nonce::assume_unique_for_key(bytes))
    }
}

/// Writes frames as sealed records.
pub struct FrameWriter<W> {
    w: W,
    key: RecordKey,
    max_message: usize,
    record: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// The frame's bytes, or `TooLarge` (nothing is written) when it exceeds the limit.
    pub fn encode(&self, frame: &Frame) -> Result<Vec<u8>, WireError> {
        let bytes = serde_json::to_vec(frame)?;
        if bytes.len() > self.max_message {
            return Err(WireError::TooLarge(bytes.len()));
        }
        Ok(bytes)
    }

    /// Write one encoded message as records of at most [`RECORD_BYTES`].
    pub async fn write_message(&mut self, message: &[u8]) -> Result<(), WireError> {
        let mut parts = message.chunks(RECORD_BYTES).peekable();
        if parts.peek().is_none() {
            return self.write_record(false, &[]).await;
        }
        while let Some(part) = parts.next() {
            let more = parts.peek().is_some();
            self.write_record(more, part).await?;
        }
        Ok(())
    }

    pub async fn write_frame(&mut self, frame: &Frame) -> Result<(), WireError> {
        let bytes = self.encode(frame)?;
        self.write_message(&bytes).await
    }

    async fn write_record(&mut self, more: bool, data: &[u8]) -> Result<(), WireError> {
        let sealed_len = 1 + data.len() + TAG_BYTES;
        let len = (sealed_len as u32).to_be_bytes();
        self.record.clear();
        self.record.extend_from_slice(&len);
        self.record.push(u8::from(more));
        self.record.extend_from_slice(data);
        let nonce = self.key.next_nonce()?;
        let tag = self
            .key
            .key
            .seal_in_place_separate_tag(nonce, aead::Aad::from(len), &mut self.record[4..])
            .map_err(|_| WireError::Unauthentic)?;
        self.record.extend_from_slice(tag.as_ref());
        self.w.write_all(&self.record).await?;
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<(), WireError> {
        self.w.flush().await?;
        Ok(())
    }
}

/// What a [`FrameReader`] read.
// Lives only from the read to the match that takes the frame out; boxing would cost an
// allocation per frame.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Received {
    Frame(Frame),
    /// A message over the limit, or one that does not parse, from an authenticated peer:
    /// read to its end and dropped (its size in bytes); the link goes on.
    Skipped(usize),
}

/// Reads frames from sealed records.
pub struct FrameReader<R> {
    r: R,
    key: RecordKey,
    max_message: usize,
    record: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub async fn read_frame(&mut self) -> Result<Received, WireError> {
        let mut message = Vec::new();
        let mut total = 0usize;
        loop {
            let len = self.r.read_u32().await?;
            let sealed = len as usize;
            if !(1 + TAG_BYTES..=MAX_SEALED).contains(&sealed) {
                return Err(WireError::BadRecord(sealed));
            }
            self.record.resize(sealed, 0);
            self.r.read_exact(&mut self.record).await?;
            let nonce = self.key.next_nonce()?;
            let plain = self
                .key
                .key
                .open_in_place(nonce, aead::Aad::from(len.to_be_bytes()), &mut self.record)
                .map_err(|_| WireError::Unauthentic)?;
            let (flag, data) = plain.split_first().ok_or(WireError::BadRecord(sealed))?;
            total = total.saturating_add(data.len());
            // Past the limit the parts are counted, not kept.
            if total <= self.max_message {
                message.extend_from_slice(data);
            } else {
                message = Vec::new();
            }
            match flag {
                0 => break,
                1 => continue,
                _ => return Err(WireError::BadRecord(sealed)),
            }
        }
        if total > self.max_message {
            tracing::warn!(
                bytes = total,
                limit = self.max_message,
                "nodelink: peer sent a frame over cluster.max_frame_bytes; skipped"
            );
            return Ok(Received::Skipped(total));
        }
        match serde_json::from_slice(&message) {
            Ok(frame) => Ok(Received::Frame(frame)),
            Err(e) => {
                tracing::warn!(bytes = total, error = %e, "nodelink: peer sent a frame that does not parse; skipped");
                Ok(Received::Skipped(total))
            }
        }
    }
}

async fn read_plain<R: AsyncRead + Unpin>(r: &mut R) -> Result<Frame, WireError> {
    let len = r.read_u32().await? as usize;
    if len > HANDSHAKE_FRAME_BYTES {
        return Err(WireError::TooLarge(len));
    }
    let mut buf = vec![0; len];
    r.read_exact(&mut buf).await?;
    Ok(serde_json::from_slice(&buf)?)
}

async fn write_plain<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> Result<(), WireError> {
    let bytes = serde_json::to_vec(frame)?;
    w.write_u32(bytes.len() as u32).await?;
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(())
}

/// The dialer's side of the handshake with the node it expects at the other end.
pub async fn dial<R, W>(
    mut r: R,
    mut w: W,
    secret: &LinkSecret,
    me: NodeId,
    expected: NodeId,
    max_message: usize,
) -> Result<(FrameReader<R>, FrameWriter<W>), WireError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let n1 = nonce();
    write_plain(
        &mut w,
        &Frame::Hello {
            node: me,
            nonce: n1.clone(),
        },
    )
    .await?;
    let Frame::Challenge {
        node: peer,
        nonce: n2,
    } = read_plain(&mut r).await?
    else {
        return Err(WireError::Handshake("expected Challenge"));
    };
    if peer != expected {
        return Err(WireError::Handshake("peer has another node id"));
    }
    if !is_nonce(&n2) {
        return Err(WireError::Handshake("malformed nonce"));
    }
    let proof = secret.proof("dialer", me, peer, &n1, &n2);
    write_plain(&mut w, &Frame::Proof { proof }).await?;
    let Frame::Accepted { proof } = read_plain(&mut r).await? else {
        return Err(WireError::Handshake("expected Accepted"));
    };
    if !secret.verify("acceptor", me, peer, &n1, &n2, &proof) {
        return Err(WireError::Handshake(
            "peer does not hold the cluster secret",
        ));
    }
    let (outbound, inbound) = secret.record_keys(me, peer, &n1, &n2)?;
    Ok((
        FrameReader {
            r,
            key: inbound,
            max_message,
            record: Vec::new(),
        },
        FrameWriter {
            w,
            key: outbound,
            max_message,
            record: Vec::new(),
        },
    ))
}

/// The acceptor's side of the handshake; gives the dialer's node id.
pub async fn accept<R, W>(
    mut r: R,
    mut w: W,
    secret: &LinkSecret,
    me: NodeId,
    max_message: usize,
) -> Result<(NodeId, FrameReader<R>, FrameWriter<W>), WireError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Frame::Hello {
        node: peer,
        nonce: n1,
    } = read_plain(&mut r).await?
    else {
        return Err(WireError::Handshake("expected Hello"));
    };
    if !is_nonce(&n1) {
        return Err(WireError::Handshake("malformed nonce"));
    }
    let n2 = nonce();
    write_plain(
        &mut w,
        &Frame::Challenge {
            node: me,
            nonce: n2.clone(),
        },
    )
    .await?;
    let Frame::Proof { proof } = read_plain(&mut r).await? else {
        return Err(WireError::Handshake("expected Proof"));
    };
    if !secret.verify("dialer", peer, me, &n1, &n2, &proof) {
        // Nothing more is sent: the dialer has not shown the secret, so it gets no proof.
        return Err(WireError::Handshake("wrong cluster secret"));
    }
    let proof = secret.proof("acceptor", peer, me, &n1, &n2);
    write_plain(&mut w, &Frame::Accepted { proof }).await?;
    let (inbound, outbound) = secret.record_keys(peer, me, &n1, &n2)?;
    Ok((
        peer,
        FrameReader {
            r,
            key: inbound,
            max_message,
            record: Vec::new(),
        },
        FrameWriter {
            w,
            key: outbound,
            max_message,
            record: Vec::new(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::messages::{Push, Reply};
    use tokio::io::{duplex, DuplexStream, ReadHalf, WriteHalf};

    const MAX: usize = 1 << 20;
    type Ends = (
        FrameReader<ReadHalf<DuplexStream>>,
        FrameWriter<WriteHalf<DuplexStream>>,
    );

    /// A dialer (node 1) and an acceptor (node 2) over an in-memory pipe.
    async fn pair(
        dialer_secret: &str,
        acceptor_secret: &str,
    ) -> (Result<Ends, WireError>, Result<(NodeId, Ends), WireError>) {
        let (a, b) = duplex(1 << 20);
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        let (ds, as_) = (
            LinkSecret::new(dialer_secret),
            LinkSecret::new(acceptor_secret),
        );
        let (d, acc) = tokio::join!(dial(ar, aw, &ds, 1, 2, MAX), accept(br, bw, &as_, 2, MAX));
        (d, acc.map(|(p, r, w)| (p, (r, w))))
    }

    fn push(n: usize) -> Frame {
        Frame::Push(Push::Deliver {
            to: proto::jid::Jid::parse("a@b/c").unwrap(),
            stanza: "x".repeat(n),
        })
    }

    fn stanza_len(r: Received) -> usize {
        match r {
            Received::Frame(Frame::Push(Push::Deliver { stanza, .. })) => stanza.len(),
            other => panic!("expected a Deliver push, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn frames_cross_sealed_both_ways_and_large_ones_in_chunks() {
        let (d, a) = pair("s3cret-s3cret-s3cret", "s3cret-s3cret-s3cret").await;
        let ((mut dr, mut dw), (peer, (mut ar, mut aw))) = (d.unwrap(), a.unwrap());
        assert_eq!(peer, 1);
        dw.write_frame(&push(10)).await.unwrap();
        // Several records: RECORD_BYTES * 3 and a bit.
        dw.write_frame(&push(3 * RECORD_BYTES + 7)).await.unwrap();
        dw.flush().await.unwrap();
        assert_eq!(stanza_len(ar.read_frame().await.unwrap()), 10);
        assert_eq!(
            stanza_len(ar.read_frame().await.unwrap()),
            3 * RECORD_BYTES + 7
        );
        aw.write_frame(&Frame::Reply {
            id: 9,
            body: Reply::Pong,
        })
        .await
        .unwrap();
        aw.flush().await.unwrap();
        assert!(matches!(
            dr.read_frame().await.unwrap(),
            Received::Frame(Frame::Reply {
                id: 9,
                body: Reply::Pong
            })
        ));
    }

    #[tokio::test]
    async fn wrong_secret_fails_and_the_acceptor_proves_nothing() {
        // Drive the acceptor by hand as a dialer without the secret would.
        let (a, b) = duplex(1 << 16);
        let (mut ar, mut aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        let secret = LinkSecret::new("the-real-cluster-secret");
        let acceptor =
            tokio::spawn(async move { accept(br, bw, &secret, 2, MAX).await.map(|_| ()) });
        let n1 = nonce();
        write_plain(
            &mut aw,
            &Frame::Hello {
                node: 1,
                nonce: n1.clone(),
            },
        )
        .await
        .unwrap();
        let Frame::Challenge { node: 2, nonce: n2 } = read_plain(&mut ar).await.unwrap() else {
            panic!("expected a bare Challenge");
        };
        let guess = LinkSecret::new("a-guessed-secret-value").proof("dialer", 1, 2, &n1, &n2);
        write_plain(&mut aw, &Frame::Proof { proof: guess })
            .await
            .unwrap();
        assert!(matches!(
            acceptor.await.unwrap(),
            Err(WireError::Handshake("wrong cluster secret"))
        ));
        // The acceptor closed without a word: no Accepted, no proof.
        let mut rest = Vec::new();
        ar.read_to_end(&mut rest).await.unwrap();
        assert!(
            rest.is_empty(),
            "acceptor sent {} bytes after a wrong proof",
            rest.len()
        );

        // Both sides of a real handshake with different secrets fail.
        let (d, a) = pair("one-secret-one-secret", "another-secret-value").await;
        assert!(d.is_err() && a.is_err());
    }

    #[tokio::test]
    async fn oversized_handshake_frame_is_refused_without_allocating() {
        let (a, b) = duplex(1 << 16);
        let (_ar, mut aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        aw.write_u32(u32::MAX).await.unwrap();
        let r = accept(br, bw, &LinkSecret::new("the-real-cluster-secret"), 2, MAX).await;
        assert!(matches!(r, Err(WireError::TooLarge(_))));
    }

    /// Sealed records between two ends, and what the receiver makes of `bytes` instead.
    async fn tampered(
        mangle: impl FnOnce(&mut Vec<u8>, &[usize]),
    ) -> Vec<Result<Received, WireError>> {
        // Capture what the dialer writes into a buffer, then replay an altered copy to
        // the acceptor's reader.
        let (d, a) = pair("s3cret-s3cret-s3cret", "s3cret-s3cret-s3cret").await;
        let ((_dr, dw), (_, (ar, _aw))) = (d.unwrap(), a.unwrap());
        let mut capture = FrameWriter {
            w: Vec::new(),
            key: dw.key,
            max_message: MAX,
            record: Vec::new(),
        };
        let mut starts = Vec::new();
        for n in [1, 2, 3] {
            starts.push(capture.w.len());
            capture.write_frame(&push(n)).await.unwrap();
        }
        let mut bytes = capture.w;
        mangle(&mut bytes, &starts);
        let mut reader = FrameReader {
            r: &bytes[..],
            key: ar.key,
            max_message: MAX,
            record: Vec::new(),
        };
        let mut out = Vec::new();
        loop {
            let r = reader.read_frame().await;
            let stop = r.is_err();
            out.push(r);
            if stop {
                break;
            }
        }
        out
    }

    #[tokio::test]
    async fn untouched_records_open_in_order() {
        let got = tampered(|_, _| {}).await;
        let lens: Vec<usize> = got
            .into_iter()
            .take(3)
            .map(|r| stanza_len(r.unwrap()))
            .collect();
        assert_eq!(lens, vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn an_altered_record_is_rejected() {
        // One bit of the second record's ciphertext flipped: the first still opens, the
        // second does not, and nothing after it is read.
        let got = tampered(|b, s| b[s[1] + 10] ^= 1).await;
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(matches!(got[0], Ok(Received::Frame(_))), "{got:?}");
        assert!(matches!(got[1], Err(WireError::Unauthentic)), "{got:?}");
        // The length prefix is authenticated too (associated data): a record cut short and
        // its length edited to match fails as well.
        let got = tampered(|b, s| {
            let len = u32::from_be_bytes([b[s[1]], b[s[1] + 1], b[s[1] + 2], b[s[1] + 3]]) - 1;
            b[s[1]..s[1] + 4].copy_from_slice(&len.to_be_bytes());
            b.remove(s[2] - 1);
        })
        .await;
        assert!(matches!(got[1], Err(WireError::Unauthentic)), "{got:?}");
    }

    #[tokio::test]
    async fn a_replayed_or_reordered_record_is_rejected() {
        // Replay: record 1 again in place of record 2.
        let got = tampered(|b, s| {
            let first = b[s[0]..s[1]].to_vec();
            b.splice(s[1]..s[2], first);
        })
        .await;
        assert_eq!(got.len(), 2);
        assert!(matches!(got[1], Err(WireError::Unauthentic)));
        // Reorder: records 2 and 3 swapped.
        let got = tampered(|b, s| {
            let (second, third) = (b[s[1]..s[2]].to_vec(), b[s[2]..].to_vec());
            b.truncate(s[1]);
            b.extend(third);
            b.extend(second);
        })
        .await;
        assert_eq!(got.len(), 2);
        assert!(matches!(got[1], Err(WireError::Unauthentic)));
    }

    #[tokio::test]
    async fn an_oversized_record_header_is_refused_before_reading_it() {
        let got = tampered(|b, s| {
            b.truncate(s[1]);
            b.extend_from_slice(&u32::MAX.to_be_bytes());
        })
        .await;
        assert!(
            matches!(got.last(), Some(Err(WireError::BadRecord(_)))),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn a_message_over_the_limit_is_refused_by_the_sender_and_skipped_by_the_receiver() {
        let (d, a) = pair("s3cret-s3cret-s3cret", "s3cret-s3cret-s3cret").await;
        let ((_dr, mut dw), (_, (mut ar, _aw))) = (d.unwrap(), a.unwrap());
        assert!(matches!(
            dw.encode(&push(MAX + 1)),
            Err(WireError::TooLarge(_))
        ));
        // A sender with a larger limit: the receiver skips the message and reads on.
        dw.max_message = 4 * MAX;
        let send = async {
            dw.write_frame(&push(2 * MAX)).await.unwrap();
            dw.write_frame(&push(5)).await.unwrap();
            dw.flush().await.unwrap();
        };
        // The pipe holds less than the large message: read while it is written.
        let receive = async {
            let first = ar.read_frame().await.unwrap();
            let second = ar.read_frame().await.unwrap();
            (first, second)
        };
        let ((), (first, second)) = tokio::join!(send, receive);
        assert!(
            matches!(first, Received::Skipped(n) if n > 2 * MAX),
            "{first:?}"
        );
        assert_eq!(stanza_len(second), 5);
    }
}
