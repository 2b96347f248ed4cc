//! XEP-0082 date and time profiles: the UTC `DateTime` form (`2026-11-22T03:04:05Z`) used by
//! delayed delivery (XEP-0203), entity time (XEP-0202) and the time bounds of archive queries
//! (XEP-0313 §4.1.2). Pure: the caller supplies the instant as seconds or milliseconds since
//! the Unix epoch, and parsing gives milliseconds back.

/// XEP-0082 §3.2 DateTime in UTC for `secs` seconds after 1970-01-01T00:00:00Z.
pub fn utc_stamp(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// XEP-0082 §3.2 DateTime in UTC for `ms` milliseconds after the epoch: whole seconds as
/// [`utc_stamp`] writes them, otherwise with three fractional digits
/// (`2026-11-18T11:06:40.250Z`; §3.2 allows fractions of a second).
pub fn utc_stamp_ms(ms: u64) -> String {
    let stamp = utc_stamp(ms / 1000);
    match ms % 1000 {
        0 => stamp,
        frac => format!("{}.{frac:03}Z", &stamp[..stamp.len() - 1]),
    }
}

/// Parse an XEP-0082 §3.2 DateTime, `CCYY-MM-DDThh:mm:ss[.sss]TZD` with `TZD` `Z` or
/// `±hh:mm`, into milliseconds since the Unix epoch (negative before 1970). Fractional digits
/// past the millisecond are dropped (truncated, so a bound never moves past its instant by
/// more than it said). `None` for anything else, including impossible dates (`02-30`).
pub fn parse_ms(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    // The fixed part: CCYY-MM-DDThh:mm:ss is 19 bytes.
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let (hour, minute, second) = (
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    // Second 60 is a leap second (XEP-0082 follows ISO 8601, which has them).
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &b[19..];
    let mut millis = 0;
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        for (i, &d) in frac[..n.min(3)].iter().enumerate() {
            millis += i64::from(d - b'0') * [100, 10, 1][i];
        }
        rest = &frac[n..];
    }
    let offset_minutes = match rest {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (h, m) = (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?);
            if h > 23 || m > 59 {
                return None;
            }
            let minutes = h * 60 + m;
            if *sign == b'+' {
                minutes
            } else {
                -minutes
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    Some(secs * 1000 + millis)
}

/// The value of a run of ASCII digits (at most four here, so no overflow).
fn digits(b: &[u8]) -> Option<i64> {
    b.iter().try_fold(0i64, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
    })
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm, the
/// inverse of the one in [`utc_stamp`]).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_xep_0082_utc() {
        assert_eq!(utc_stamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_stamp(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(utc_stamp(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_stamp(951_868_799), "2000-02-29T23:59:59Z");
    }

    #[test]
    fn millisecond_stamps() {
        assert_eq!(utc_stamp_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_stamp_ms(1_795_000_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(utc_stamp_ms(1_795_000_000_250), "2026-11-18T11:06:40.250Z");
        assert_eq!(utc_stamp_ms(7), "1970-01-01T00:00:00.007Z");
    }

    #[test]
    fn parses_xep_0082_datetimes() {
        let cases: &[(&str, i64)] = &[
            ("1970-01-01T00:00:00Z", 0),
            ("2026-11-18T11:06:40Z", 1_795_000_000_000),
            ("2026-11-18T11:06:40.250Z", 1_795_000_000_250),
            ("2026-11-18T11:06:40.2Z", 1_795_000_000_200),
            // Digits past the millisecond are truncated.
            ("2026-11-18T11:06:40.123999Z", 1_795_000_000_123),
            ("2026-11-18T12:06:40+01:00", 1_795_000_000_000),
            ("2026-11-18T05:36:40-05:30", 1_795_000_000_000),
            ("2000-02-29T23:59:59Z", 951_868_799_000),
            ("1969-12-31T23:59:59Z", -1000),
            ("2016-12-31T23:59:60Z", 1_483_228_800_000),
        ];
        for &(text, ms) in cases {
            assert_eq!(parse_ms(text), Some(ms), "{text}");
        }
        // Round trip through the writer.
        for ms in [0u64, 951_868_799_000, 1_795_000_000_250, 4_102_444_800_001] {
            assert_eq!(parse_ms(&utc_stamp_ms(ms)), Some(ms as i64));
        }
    }

    #[test]
    fn refuses_what_is_not_a_datetime() {
        for bad in [
            "",
            "2026-11-18",
            "2026-11-18T11:06:40",
            "2026-11-18 11:06:40Z",
            "2026-11-18T11:06Z",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-00-10T00:00:00Z",
            "2026-11-18T24:00:00Z",
            "2026-11-18T11:60:00Z",
            "2026-11-18T11:06:40.Z",
            "2026-11-18T11:06:40+0100",
            "2026-11-18T11:06:40+24:00",
            "2026-11-18T11:06:40z",
            "+026-11-18T11:06:40Z",
            "2026-11-18T11:06:40Zjunk",
            "２026-11-18T11:06:40Z",
        ] {
            assert_eq!(parse_ms(bad), None, "{bad}");
        }
    }
}
