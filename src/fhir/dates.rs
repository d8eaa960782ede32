//! Dates of FHIR's partial precisions as time intervals.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, TimeZone, Utc};

/// The stored timestamp form: fixed-width UTC with microseconds, so text order is time order.
pub fn format_instant(instant: DateTime<Utc>) -> String {
    // `%Y-%m-%dT%H:%M:%S%.6fZ` (see the test), without parsing a format string each time:
    // every request formats a few (its token's check, its audit event).
    instant.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_are_written_in_the_strftime_form_also_at_the_edges_of_the_calendar() {
        let written = ["2026-12-07T19:14:03.123456Z", "2026-01-01T00:00:00.000000Z", "0000-01-01T00:00:00.000001Z", "9999-12-31T23:59:59.999999Z"];
        let mut instants = Vec::new();
        for text in written {
            let instant = DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc);
            assert_eq!(format_instant(instant), text);
            instants.push(instant);
        }
        // Beyond four-digit years, where a search's `ap` margin or a year's upper bound can go.
        instants.push(Utc.with_ymd_and_hms(10_000, 1, 1, 0, 0, 0).unwrap());
        instants.push(Utc.with_ymd_and_hms(-1, 6, 1, 12, 0, 0).unwrap());
        for instant in instants {
            assert_eq!(format_instant(instant), instant.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string());
        }
    }
}
