//! Durations on the command line (`run --checkpoint-interval`, `savepoint --timeout`), read by
//! the `humantime` crate.

use std::time::Duration;

/// The examples an error message offers.
const EXAMPLES: &str = "such as 250ms, 1.5s, 2m or 1h";

/// Parses a duration as `humantime` reads it (`250ms`, `1.5s`, `2m`, `1h`, `1h 30m`), or a bare
/// whole number as milliseconds (`500`), as paystream always has.
///
/// Zero is refused (a checkpoint interval or a timeout of nothing means nothing), and so is
/// anything longer than `u64::MAX` milliseconds (some 585 million years): a deadline that far
/// ahead would overflow the clock it is added to.
pub(super) fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let duration = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        // Digits alone can only fail by overflowing a u64.
        t.parse::<u64>().map(Duration::from_millis).map_err(|_| too_long(text))?
    } else {
        humantime::parse_duration(t).map_err(|e| match e {
            humantime::DurationError::NumberOverflow => too_long(text),
            e => format!("{text:?} is not a duration ({e}): give one {EXAMPLES}, or a whole number of milliseconds"),
        })?
    };
    if duration.is_zero() {
        return Err(format!("{text:?} is zero: give a positive duration, {EXAMPLES}"));
    }
    if duration > Duration::from_millis(u64::MAX) {
        return Err(too_long(text));
    }
    Ok(duration)
}

fn too_long(text: &str) -> String {
    format!("{text:?} is too long a duration (at most {} ms): give one {EXAMPLES}", u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Result<Duration, String> {
        Ok(Duration::from_millis(ms))
    }

    #[test]
    fn reads_humantime_durations() {
        assert_eq!(parse_duration("250ms"), ms(250));
        assert_eq!(parse_duration("1s"), ms(1_000));
        assert_eq!(parse_duration("1.5s"), ms(1_500));
        assert_eq!(parse_duration("2m"), ms(120_000));
        assert_eq!(parse_duration("1h"), ms(3_600_000));
        assert_eq!(parse_duration("1h 30m"), ms(5_400_000));
        assert_eq!(parse_duration(" 60s "), ms(60_000));
        assert_eq!(parse_duration("1500us"), ms(1).map(|d| d + Duration::from_micros(500)));
    }

    /// A bare number is milliseconds, as before humantime.
    #[test]
    fn a_bare_number_is_milliseconds() {
        assert_eq!(parse_duration("500"), ms(500));
        assert_eq!(parse_duration("1"), ms(1));
        assert_eq!(parse_duration("007"), ms(7));
        assert_eq!(parse_duration(&u64::MAX.to_string()), ms(u64::MAX));
    }

    #[test]
    fn zero_is_refused_with_the_value_and_an_example() {
        for text in ["0", "0s", "0ms", "0.0s", "0h 0m"] {
            let e = parse_duration(text).unwrap_err();
            assert!(e.contains(&format!("{text:?} is zero")) && e.contains("such as 250ms"), "{text}: {e}");
        }
    }

    #[test]
    fn overflow_is_refused_with_the_value_and_an_example() {
        for text in [
            "18446744073709551616",
            "99999999999999999999999",
            "18446744073709551616s",
            "18446744073709551615s",
            "584942417356y",
            "99999999999999999999h",
        ] {
            let e = parse_duration(text).unwrap_err();
            assert!(e.contains(&format!("{text:?} is too long")) && e.contains("such as 250ms"), "{text}: {e}");
        }
    }

    #[test]
    fn other_text_is_refused_with_the_value_and_an_example() {
        for text in ["", " ", "1.5", "-1s", "5x", "s", "1s2", "fast", "1,5s"] {
            let e = parse_duration(text).unwrap_err();
            assert!(e.starts_with(&format!("{text:?} is not a duration")) && e.contains("such as 250ms"), "{text}: {e}");
        }
    }
}
