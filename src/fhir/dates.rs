//! Dates of FHIR's partial precisions as time intervals.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, TimeZone, Utc};

/// The stored timestamp form: fixed-width UTC with microseconds, so text order is time order.
pub fn format_instant(instant: DateTime<Utc>) -> String {
    instant.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// The interval `[low, high)` that a date/dateTime/instant of any precision covers.
pub fn precision_range(text: &str) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    match text.len() {
        4 => {
            let year: i32 = text.parse().ok()?;
            let low = Utc.with_ymd_and_hms(year, 1, 1, 0, 0, 0).single()?;
            let high = Utc.with_ymd_and_hms(year + 1, 1, 1, 0, 0, 0).single()?;
            Some((low, high))
        }
        7 => {
            let date = NaiveDate::parse_from_str(&format!("{text}-01"), "%Y-%m-%d").ok()?;
            let next = if date.month() == 12 {
                NaiveDate::from_ymd_opt(date.year() + 1, 1, 1)?
            } else {
                NaiveDate::from_ymd_opt(date.year(), date.month() + 1, 1)?
            };
            Some((Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0)?), Utc.from_utc_datetime(&next.and_hms_opt(0, 0, 0)?)))
        }
        10 => {
            let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
            let low = Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0)?);
            Some((low, low + Duration::days(1)))
        }
        _ => {
            if let Ok(instant) = DateTime::parse_from_rfc3339(text) {
                let instant = instant.with_timezone(&Utc);
                let width = if text.contains('.') { Duration::microseconds(1) } else { Duration::seconds(1) };
                return Some((instant, instant + width));
            }
            if let Ok(naive) = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M") {
                let low = Utc.from_utc_datetime(&naive);
                return Some((low, low + Duration::minutes(1)));
            }
            let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S").ok()?;
            let low = Utc.from_utc_datetime(&naive);
            Some((low, low + Duration::seconds(1)))
        }
    }
}
