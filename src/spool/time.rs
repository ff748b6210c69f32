//! Spool times (whole seconds since the Unix epoch, as `u64`) checked and
//! formatted without ever panicking. A time the calendar cannot show in
//! four digits (at or after the year 10000), or that does not even fit the
//! signed seconds `chrono` counts in, is out of range: readers treat a file
//! holding one as corrupt, and formatting shows it as invalid instead.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Datelike, Utc};

/// The last second a spool time may name: 9999-12-31 23:59:59 UTC.
pub const MAX_SECS: u64 = 253_402_300_799;

/// Why a number of seconds is not a usable spool time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("time {0} does not fit in a signed 64-bit number of seconds")]
    Overflow(u64),
    #[error("time {0} is beyond the calendar")]
    Unrepresentable(u64),
    #[error("time {secs} is in the year {year}; spool times end with the year 9999")]
    TooLate { secs: u64, year: i32 },
    #[error("time is before 1970")]
    BeforeEpoch,
}

/// The UTC date and time of `secs`, when it is a usable spool time
/// (1970-01-01 00:00:00 up to and including [`MAX_SECS`]).
pub fn check(secs: u64) -> Result<DateTime<Utc>, TimeError> {
    let signed = i64::try_from(secs).map_err(|_| TimeError::Overflow(secs))?;
    let t = DateTime::from_timestamp(signed, 0).ok_or(TimeError::Unrepresentable(secs))?;
    if t.year() > 9999 {
        return Err(TimeError::TooLate {
            secs,
            year: t.year(),
        });
    }
    Ok(t)
}

/// Seconds since the epoch of a clock reading, when it is a usable spool
/// time.
pub fn secs_of(t: SystemTime) -> Result<u64, TimeError> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| TimeError::BeforeEpoch)?
        .as_secs();
    check(secs).map(|_| secs)
}

/// RFC 5322 date of `secs`, e.g. `Sun, 29 Nov 2026 15:17:12 +0000`; for an
/// out-of-range time a text that says so. Never panics.
pub fn rfc5322(secs: u64) -> String {
    match check(secs) {
        Ok(t) => {
            let mut out = String::new();
            match write!(out, "{}", t.format("%a, %d %b %Y %H:%M:%S +0000")) {
                Ok(()) => out,
                Err(_) => invalid(secs),
            }
        }
        Err(_) => invalid(secs),
    }
}

/// [`rfc5322`] of a clock reading. Never panics.
pub fn rfc5322_at(t: SystemTime) -> String {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => rfc5322(d.as_secs()),
        Err(_) => "(invalid time before 1970)".to_string(),
    }
}

fn invalid(secs: u64) -> String {
    format!("(invalid time {secs})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn year_9999_is_the_last_usable_year() {
        assert!(check(0).is_ok());
        assert!(check(MAX_SECS).is_ok());
        assert_eq!(rfc5322(MAX_SECS), "Fri, 31 Dec 9999 23:59:59 +0000");
        assert!(matches!(
            check(MAX_SECS + 1),
            Err(TimeError::TooLate { year: 10000, .. })
        ));
        assert_eq!(
            rfc5322(MAX_SECS + 1),
            "(invalid time 253402300800)",
            "year 10000 is shown as invalid, not formatted"
        );
    }

    #[test]
    fn huge_times_are_errors_not_panics() {
        assert_eq!(check(u64::MAX), Err(TimeError::Overflow(u64::MAX)));
        assert_eq!(rfc5322(u64::MAX), "(invalid time 18446744073709551615)");
        // The first value a cast to i64 would turn negative.
        let wrap = i64::MAX as u64 + 1;
        assert_eq!(check(wrap), Err(TimeError::Overflow(wrap)));
        // Fits in i64 but is beyond what chrono can count.
        assert_eq!(
            check(i64::MAX as u64),
            Err(TimeError::Unrepresentable(i64::MAX as u64))
        );
        assert!(rfc5322(i64::MAX as u64).starts_with("(invalid time"));
    }

    #[test]
    fn same_text_as_http_date_in_range() {
        for secs in [0, 1_700_000_000, 1_767_225_600, 4_102_444_800, MAX_SECS] {
            let http = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
            assert_eq!(rfc5322(secs), http.replace(" GMT", " +0000"), "{secs}");
        }
    }

    #[test]
    fn clock_readings() {
        assert_eq!(
            rfc5322_at(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "Tue, 14 Nov 2023 22:13:20 +0000"
        );
        assert_eq!(
            rfc5322_at(UNIX_EPOCH - Duration::from_secs(1)),
            "(invalid time before 1970)"
        );
        assert!(rfc5322_at(UNIX_EPOCH + Duration::from_secs(MAX_SECS + 1)).starts_with("(invalid"));
        assert_eq!(secs_of(UNIX_EPOCH + Duration::from_secs(5)), Ok(5));
        assert_eq!(
            secs_of(UNIX_EPOCH - Duration::from_secs(1)),
            Err(TimeError::BeforeEpoch)
        );
    }
}
