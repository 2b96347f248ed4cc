//! The text a generator puts in a message body or presence status so the receiver can tell
//! who sent it, which one it was, and when: `lg FROM SEQ SENT_US`.

/// The marker for message `seq` of user `from`, sent `sent_us` µs after the run's epoch.
pub fn format(from: u32, seq: u32, sent_us: u64) -> String {
    format!("lg {from} {seq} {sent_us}")
}

/// `(from, seq, sent_us)` if `text` is exactly a marker.
pub fn parse(text: &str) -> Option<(u32, u32, u64)> {
    let mut fields = text.split_whitespace();
    if fields.next()? != "lg" {
        return None;
    }
    let from = fields.next()?.parse().ok()?;
    let seq = fields.next()?.parse().ok()?;
    let sent_us = fields.next()?.parse().ok()?;
    fields.next().is_none().then_some((from, seq, sent_us))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        assert_eq!(parse(&format(3, 17, 123456)), Some((3, 17, 123456)));
        assert_eq!(parse("lg 3 17"), None);
        assert_eq!(parse("lg 3 17 1 extra"), None);
        assert_eq!(parse("hello 3 17 1"), None);
        assert_eq!(parse("lg x 17 1"), None);
    }
}
