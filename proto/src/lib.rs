//! Pure XMPP protocol for Switchboard: bytes and elements in, bytes and elements out.
//!
//! Nothing here opens a socket, spawns a task, reads a clock or touches storage, so every
//! behaviour can be tested byte-in/byte-out.
#![forbid(unsafe_code)]

pub mod address;
pub mod avatar;
pub mod blocklist;
pub mod bookmarks;
pub mod caps;
pub mod datetime;
pub mod dialback;
pub mod element;
pub mod error;
pub mod im;
pub mod jid;
pub mod mam;
pub mod muc;
pub mod negotiation;
pub mod ns;
pub mod privacy;
pub mod pubsub;
pub mod rsm;
pub mod s2s;
pub mod sasl;
pub mod sm;
pub mod stanza_id;
pub mod stream;
