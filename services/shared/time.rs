//! `google.protobuf.Timestamp` to and from UTC instants, at the microsecond precision Postgres keeps;
//! and timeouts as `google.protobuf.Duration`.

use chrono::{DateTime, Datelike, SubsecRound, Utc};
use prost_types::Timestamp;

use super::status::Violations;

/// Validates `timestamp` for `field`. Sub-microsecond digits are dropped, as Postgres would.
pub fn parse(field: &str, timestamp: &Timestamp, violations: &mut Violations) -> Option<DateTime<Utc>> {
    let instant = u32::try_from(timestamp.nanos)
        .ok()
        .filter(|nanos| *nanos < 1_000_000_000)
        .and_then(|nanos| DateTime::from_timestamp(timestamp.seconds, nanos))
        // Postgres keeps years 4713 BC to 294276 AD; keep well inside.
        .filter(|instant| (1970..=9999).contains(&instant.year()));
    match instant {
        Some(instant) => Some(instant.trunc_subsecs(6)),
        None => {
            violations.add(field, "must be a valid timestamp between 1970 and 9999");
            None
        }
    }
}

/// The instant as a `google.protobuf.Timestamp`.
pub fn to_proto(instant: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: instant.timestamp(),
        // Below one second, so it fits.
        nanos: i32::try_from(instant.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// A timeout as a `google.protobuf.Duration` (the longest one prost can hold, for one beyond it).
pub fn duration_to_proto(duration: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(duration).unwrap_or(prost_types::Duration { seconds: i64::MAX, nanos: 999_999_999 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_nanoseconds_below_a_microsecond() {
        let mut violations = Violations::default();
        let instant = parse("t", &Timestamp { seconds: 1_764_115_199, nanos: 999_999_999 }, &mut violations).unwrap();
        assert_eq!(to_proto(instant), Timestamp { seconds: 1_764_115_199, nanos: 999_999_000 });
    }

    #[test]
    fn refuses_out_of_range_values() {
        for bad in [
            Timestamp { seconds: 0, nanos: -1 },
            Timestamp { seconds: 0, nanos: 1_000_000_000 },
            Timestamp { seconds: i64::MAX, nanos: 0 },
            Timestamp { seconds: -1, nanos: 0 },
        ] {
            let mut violations = Violations::default();
            assert!(parse("t", &bad, &mut violations).is_none(), "{bad:?} was accepted");
            assert_eq!(violations.fields().collect::<Vec<_>>(), ["t"]);
        }
    }
}
