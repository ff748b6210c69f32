//! Dates as the status page shows and reads them: Danish time
//! (Europe/Copenhagen, summer time included), written day.month.year
//! (`30.06.2027`, with `kl. 23.59` when the moment is not midnight), the
//! numeric form Danish readers expect; the date picker sends ISO dates
//! (`2027-06-30`), which mean the start of that day in Danish time.

use chrono::{DateTime, Timelike};
use chrono_tz::Europe::Copenhagen;
use chrono_tz::Tz;

use crate::config::Instant;

const DAY: i64 = 86_400;

/// A date from the form that is no date.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a date; pick one, or write it as YYYY-MM-DD (e.g. 2027-06-30)")]
pub struct BadDate {
    pub text: String,
}

fn local(unix: i64) -> Option<DateTime<Tz>> {
    DateTime::from_timestamp(unix, 0).map(|t| t.with_timezone(&Copenhagen))
}

/// `30.06.2027`: the day `unix` falls on in Danish time.
pub fn day(unix: i64) -> String {
    match local(unix) {
        Some(t) => t.format("%d.%m.%Y").to_string(),
        None => format!("@{unix}"),
    }
}

/// `30.06.2027`, or `31.10.2023 kl. 23.59` when not at midnight.
pub fn moment(unix: i64) -> String {
    match local(unix) {
        Some(t) if t.hour() == 0 && t.minute() == 0 => day(unix),
        Some(t) => t.format("%d.%m.%Y kl. %H.%M").to_string(),
        None => format!("@{unix}"),
    }
}

/// `2027-06-30`: the value of the date picker for `unix`.
pub fn iso_day(unix: i64) -> String {
    match local(unix) {
        Some(t) => t.format("%Y-%m-%d").to_string(),
        None => String::new(),
    }
}

/// Whole days from `now` until `then` (negative once past).
pub fn days_until(now: i64, then: i64) -> i64 {
    (then - now).div_euclid(DAY)
}

/// The moment the picker sent: a day (`YYYY-MM-DD`, the start of that day
/// in Danish time) or an RFC 3339 time, read as `explain --at` and
/// `cutoff report --at` read it.
pub fn parse_day(text: &str) -> Result<i64, BadDate> {
    Instant::parse_when(text)
        .map(|i| i.unix)
        .map_err(|_| BadDate {
            text: text.chars().take(100).collect(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_danish_days() {
        // 2027-06-29T22:00:00Z is midnight of 30 June in summer time.
        assert_eq!(day(1_814_306_400), "30.06.2027");
        assert_eq!(moment(1_814_306_400), "30.06.2027");
        assert_eq!(iso_day(1_814_306_400), "2027-06-30");
        // 2023-10-31T23:59:59+01:00 (winter time).
        assert_eq!(moment(1_698_793_199), "31.10.2023 kl. 23.59");
        assert_eq!(day(1_698_793_199), "31.10.2023");
    }

    #[test]
    fn the_picker_means_the_start_of_the_day_in_danish_time() {
        assert_eq!(parse_day("2027-06-30"), Ok(1_814_306_400));
        // Winter: UTC+1.
        assert_eq!(parse_day("2027-01-15"), Ok(1_799_971_200 - 3600));
        assert_eq!(parse_day("2027-06-29T22:00:00Z"), Ok(1_814_306_400));
        for bad in ["", "2027-02-30", "30.06.2027", "tomorrow", "<b>"] {
            assert!(parse_day(bad).is_err(), "{bad}");
        }
        let long = "9".repeat(5000);
        assert!(parse_day(&long).unwrap_err().text.len() <= 100);
    }

    #[test]
    fn days_are_counted_down_and_past() {
        assert_eq!(days_until(0, DAY * 10), 10);
        assert_eq!(days_until(0, DAY * 10 - 1), 9);
        assert_eq!(days_until(DAY, 0), -1);
        assert_eq!(days_until(1, 0), -1);
    }
}
