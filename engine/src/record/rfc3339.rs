//! [`Rfc3339Millis`]: an event time written as RFC 3339 text (`2026-01-01T00:00:00.250Z`,
//! `2026-01-01T01:00:00+01:00`) and held as milliseconds since the Unix epoch, for records whose
//! producers write times as text rather than as `ts_ms` numbers.
//!
//! Parsed by hand (the grammar is small, and the engine then needs no date crate): the date,
//! `T`, the time, an optional fraction and the offset (`Z` or `±hh:mm`), each checked for range,
//! with a reason naming the part that is wrong. What it costs and where it is weak:
//!
//! * Milliseconds: fraction digits past the third are dropped (`.2509` reads as `.250`), so a
//!   value read and written back may lose its sub-millisecond part.
//! * Written back in UTC (`Z`) with three fraction digits: the original offset is not kept.
//! * A leap second (`23:59:60` UTC, on the last day of a month) reads as `23:59:59.999`: event times stay in
//!   order and every value writes back as valid RFC 3339, at the cost of up to a second's shift.
//! * Times before 1970-01-01T00:00:00Z are refused (event times are unsigned), and so are times
//!   after 9999-12-31T23:59:59.999Z (RFC 3339 years have four digits).

use std::fmt;

use super::json::plain_json_string;
use super::split::plain_field;
use super::CsvField;

const MILLIS_PER_SECOND: u64 = 1_000;
const SECONDS_PER_DAY: i64 = 86_400;
/// 9999-12-31T23:59:59.999Z, the last instant a four-digit year can write.
const LAST_MILLIS: u64 = 253_402_300_799_999;
/// What an error message says a field should look like.
const EXPECTED_FORM: &str = "expected the form 2026-01-01T00:00:00.250Z or 2026-01-01T01:00:00+01:00";
/// Days before the first of each month in a common year.
const DAYS_BEFORE_MONTH: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];

/// An instant read from and written as RFC 3339 text, held as milliseconds since the Unix
/// epoch: a field type for [`csv_record!`](crate::csv_record) records whose time comes as text.
///
/// In CSV and JSON lines it is a string (`2026-01-01T01:00:00.250+01:00`); any offset is read,
/// and it is written back in UTC with milliseconds (`2026-01-01T00:00:00.250Z`). In checkpoints
/// and between workers it is the number of milliseconds. Give a source event time with
/// [`millis`](Rfc3339Millis::millis):
///
/// ```
/// use paystream_engine::record::Rfc3339Millis;
/// paystream_engine::csv_record! {
///     #[derive(Clone, Debug, PartialEq)]
///     pub struct Login { pub at: Rfc3339Millis, pub user: String }
/// }
/// use paystream_engine::CsvRecord;
/// let login = Login::from_csv_line("2026-01-01T01:00:00.25+01:00,ana").unwrap();
/// assert_eq!(login.at.millis(), 1_767_225_600_250);
/// let mut line = String::new();
/// login.write_csv(&mut line);
/// assert_eq!(line, "2026-01-01T00:00:00.250Z,ana");
/// // A job gives the source event time with `.assign_timestamps(|l: &Login| l.at.millis(), ...)`.
/// let bad = Login::from_csv_line("2026-02-30T00:00:00Z,ana").unwrap_err();
/// assert!(bad.starts_with("column 1 (at): not an RFC 3339 time: day 30 is out of range for 2026-02"), "{bad}");
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rfc3339Millis(u64);

impl Rfc3339Millis {
    /// The last instant it holds: 9999-12-31T23:59:59.999Z.
    pub const MAX: Rfc3339Millis = Rfc3339Millis(LAST_MILLIS);

    /// The instant `millis` ms after the Unix epoch, or `None` after [`Rfc3339Millis::MAX`].
    pub fn from_millis(millis: u64) -> Option<Self> {
        (millis <= LAST_MILLIS).then_some(Rfc3339Millis(millis))
    }

    /// Milliseconds since the Unix epoch: the event time of a record that holds it.
    pub fn millis(self) -> u64 {
        self.0
    }

    /// Reads RFC 3339 text: `YYYY-MM-DDTHH:MM:SS`, an optional fraction of a second (`.250`)
    /// and an offset (`Z` or `+hh:mm`/`-hh:mm`); `t` and `z` may be lower case. The error
    /// says which part is wrong and the form expected.
    pub fn parse(text: &str) -> Result<Self, String> {
        parse_millis(text.as_bytes()).map(Rfc3339Millis).map_err(|why| format!("not an RFC 3339 time: {why}; {EXPECTED_FORM}"))
    }

    /// Appends the instant in UTC with milliseconds: `2026-01-01T00:00:00.250Z`.
    pub fn write(self, out: &mut String) {
        let days = (self.0 / MILLIS_PER_SECOND / SECONDS_PER_DAY as u64) as i64;
        let (year, month, day) = civil_date(days);
        let millis_of_day = self.0 % (SECONDS_PER_DAY as u64 * MILLIS_PER_SECOND);
        let seconds_of_day = millis_of_day / MILLIS_PER_SECOND;
        push_padded(out, u64::from(year), 4);
        out.push('-');
        push_padded(out, u64::from(month), 2);
        out.push('-');
        push_padded(out, u64::from(day), 2);
        out.push('T');
        push_padded(out, seconds_of_day / 3_600, 2);
        out.push(':');
        push_padded(out, seconds_of_day / 60 % 60, 2);
        out.push(':');
        push_padded(out, seconds_of_day % 60, 2);
        out.push('.');
        push_padded(out, millis_of_day % MILLIS_PER_SECOND, 3);
        out.push('Z');
    }
}

impl fmt::Display for Rfc3339Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = String::with_capacity(24);
        self.write(&mut text);
        f.write_str(&text)
    }
}

impl fmt::Debug for Rfc3339Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Rfc3339Millis({self})")
    }
}

impl std::str::FromStr for Rfc3339Millis {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        Rfc3339Millis::parse(text)
    }
}

impl From<Rfc3339Millis> for u64 {
    fn from(time: Rfc3339Millis) -> u64 {
        time.0
    }
}

impl serde::Serialize for Rfc3339Millis {
    /// Text for human-readable formats (JSON lines, TOML), the milliseconds for binary ones
    /// (bincode: checkpoints and exchanges between workers), which are smaller and cheaper.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serializer.serialize_u64(self.0)
        }
    }
}

impl<'de> serde::Deserialize<'de> for Rfc3339Millis {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            deserializer.deserialize_str(TextVisitor)
        } else {
            let millis = u64::deserialize(deserializer)?;
            Rfc3339Millis::from_millis(millis)
                .ok_or_else(|| serde::de::Error::custom(format!("{millis} ms is after 9999-12-31T23:59:59.999Z")))
        }
    }
}

struct TextVisitor;

impl serde::de::Visitor<'_> for TextVisitor {
    type Value = Rfc3339Millis;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an RFC 3339 time as a string, such as \"2026-01-01T00:00:00.250Z\"")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Rfc3339Millis, E> {
        Rfc3339Millis::parse(text).map_err(|why| E::custom(format!("{why}, found {text:?}")))
    }
}

impl CsvField for Rfc3339Millis {
    fn parse_field(text: &str) -> Result<Self, String> {
        Rfc3339Millis::parse(text)
    }
    fn write_field(&self, out: &mut String) {
        self.write(out)
    }
    /// The field's text, up to the next `,`, read in place; a bad one goes to the general path,
    /// which words the error.
    #[inline]
    fn parse_at(line: &str, at: usize) -> Option<(Self, usize)> {
        let text = plain_field(line, at)?;
        Some((Rfc3339Millis(parse_millis(text.as_bytes()).ok()?), at + text.len()))
    }
    /// A JSON string without escapes, read in place; anything else goes to serde_json.
    #[inline]
    fn parse_json_at(line: &str, at: usize) -> Option<(Self, usize)> {
        let (text, end) = plain_json_string(line, at)?;
        Some((Rfc3339Millis(parse_millis(text.as_bytes()).ok()?), end))
    }
}

/// Milliseconds since the epoch of an RFC 3339 text, or why it is not one.
fn parse_millis(text: &[u8]) -> Result<u64, String> {
    let year = number(text, 0, 4, "year")?;
    separator(text, 4, b'-', "'-' after the year")?;
    let month = number(text, 5, 2, "month")?;
    if !(1..=12).contains(&month) {
        return Err(format!("month {month} is out of range"));
    }
    separator(text, 7, b'-', "'-' after the month")?;
    let day = number(text, 8, 2, "day")?;
    if day == 0 || day > days_in_month(year, month) {
        return Err(format!("day {day} is out of range for {year:04}-{month:02}"));
    }
    if !matches!(text.get(10), Some(b'T' | b't')) {
        return Err(format!("expected 'T' between the date and the time at character 11, found {}", shown(text, 10)));
    }
    let hour = number(text, 11, 2, "hour")?;
    separator(text, 13, b':', "':' after the hour")?;
    let minute = number(text, 14, 2, "minute")?;
    separator(text, 16, b':', "':' after the minute")?;
    let second = number(text, 17, 2, "second")?;
    if hour > 23 {
        return Err(format!("hour {hour} is out of range"));
    }
    if minute > 59 {
        return Err(format!("minute {minute} is out of range"));
    }
    if second > 60 {
        return Err(format!("second {second} is out of range"));
    }
    let mut at = 19;
    let mut millis = 0;
    if text.get(at) == Some(&b'.') {
        at += 1;
        let first = at;
        while let Some(digit) = text.get(at).filter(|b| b.is_ascii_digit()) {
            // Three digits make the milliseconds; the rest are dropped (rounding down).
            if at - first < 3 {
                millis = millis * 10 + u64::from(digit - b'0');
            }
            at += 1;
        }
        match at - first {
            0 => return Err(format!("expected digits after '.' at character {}, found {}", at + 1, shown(text, at))),
            1 => millis *= 100,
            2 => millis *= 10,
            _ => {}
        }
    }
    let offset_seconds = match text.get(at) {
        Some(b'Z' | b'z') => {
            at += 1;
            0
        }
        Some(&sign @ (b'+' | b'-')) => {
            let hours = number(text, at + 1, 2, "offset's hours")?;
            separator(text, at + 3, b':', "':' in the offset")?;
            let minutes = number(text, at + 4, 2, "offset's minutes")?;
            if hours > 23 || minutes > 59 {
                return Err(format!("offset {} is out of range", String::from_utf8_lossy(&text[at..at + 6])));
            }
            at += 6;
            let seconds = i64::from(hours * 3_600 + minutes * 60);
            if sign == b'-' {
                -seconds
            } else {
                seconds
            }
        }
        _ => return Err(format!("expected the offset (Z, +hh:mm or -hh:mm) at character {}, found {}", at + 1, shown(text, at))),
    };
    if at != text.len() {
        return Err(format!("unexpected text after the offset at character {}", at + 1));
    }
    let local_seconds = days_since_epoch(year, month, day) * SECONDS_PER_DAY + i64::from(hour * 3_600 + minute * 60 + second.min(59));
    let utc_seconds = local_seconds - offset_seconds;
    if second == 60 {
        // A leap second ends a UTC day, and only the last day of a month (RFC 3339, 5.7 and
        // appendix D); it reads as the last millisecond before the next day, so that times stay
        // in order.
        let utc_day = utc_seconds.div_euclid(SECONDS_PER_DAY);
        let last_second_of_day = utc_seconds.rem_euclid(SECONDS_PER_DAY) == SECONDS_PER_DAY - 1;
        let last_day_of_month = utc_day >= 0 && {
            let (year, month, day) = civil_date(utc_day);
            day == days_in_month(year, month)
        };
        if !(last_second_of_day && last_day_of_month) {
            return Err("second 60 (a leap second) is only valid at 23:59:60 UTC on the last day of a month".to_string());
        }
        millis = 999;
    }
    let utc_millis = utc_seconds * MILLIS_PER_SECOND as i64 + millis as i64;
    if utc_millis < 0 {
        return Err("it is before 1970-01-01T00:00:00Z, where event times start".to_string());
    }
    if utc_millis as u64 > LAST_MILLIS {
        return Err("it is after 9999-12-31T23:59:59.999Z".to_string());
    }
    Ok(utc_millis as u64)
}

/// Appends the last `width` decimal digits of `value`, with leading zeros.
fn push_padded(out: &mut String, value: u64, width: u32) {
    for place in (0..width).rev() {
        out.push(char::from(b'0' + (value / 10u64.pow(place) % 10) as u8));
    }
}

/// The `width` ASCII digits at `at`, as a number; `what` names them in the error.
fn number(text: &[u8], at: usize, width: usize, what: &str) -> Result<u32, String> {
    let digits = text.get(at..at + width).filter(|d| d.iter().all(u8::is_ascii_digit));
    match digits {
        Some(digits) => Ok(digits.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0'))),
        None => Err(format!("expected the {what} as {width} digits at character {}, found {}", at + 1, shown(text, at))),
    }
}

/// Checks that `text[at]` is `byte`; `what` names it in the error.
fn separator(text: &[u8], at: usize, byte: u8, what: &str) -> Result<(), String> {
    if text.get(at) == Some(&byte) {
        Ok(())
    } else {
        Err(format!("expected {what} at character {}, found {}", at + 1, shown(text, at)))
    }
}

/// What the text holds from `at` on, for an error: a few characters, or the end.
fn shown(text: &[u8], at: usize) -> String {
    match text.get(at..) {
        None | Some([]) => "the end".to_string(),
        Some(rest) => format!("{:?}", String::from_utf8_lossy(&rest[..rest.len().min(6)])),
    }
}

fn is_leap_year(year: u32) -> bool {
    year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Leap years among years 1 to `year` (0 for `year` 0).
fn leap_years_through(year: i64) -> i64 {
    year / 4 - year / 100 + year / 400
}

/// Days from 1970-01-01 to the given date of the proleptic Gregorian calendar (negative before).
fn days_since_epoch(year: u32, month: u32, day: u32) -> i64 {
    let year = i64::from(year);
    let days_before_year = 365 * (year - 1970) + leap_years_through(year - 1) - leap_years_through(1969);
    let leap_day = i64::from(month > 2 && is_leap_year(year as u32));
    days_before_year + DAYS_BEFORE_MONTH[month as usize - 1] + leap_day + i64::from(day) - 1
}

/// The date (year, month, day) `days` days after 1970-01-01, for `days` ≥ 0.
fn civil_date(days: i64) -> (u32, u32, u32) {
    // An estimate from the mean length of a year (146,097 days every 400 years), then corrected.
    let mut year = (1970 + days * 400 / 146_097) as u32;
    while days_since_epoch(year, 1, 1) > days {
        year -= 1;
    }
    while days_since_epoch(year + 1, 1, 1) <= days {
        year += 1;
    }
    let mut day_of_year = (days - days_since_epoch(year, 1, 1)) as u32;
    let mut month = 1;
    while day_of_year >= days_in_month(year, month) {
        day_of_year -= days_in_month(year, month);
        month += 1;
    }
    (year, month, day_of_year + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::fixtures::Rng;

    fn millis(text: &str) -> Result<u64, String> {
        Rfc3339Millis::parse(text).map(Rfc3339Millis::millis)
    }

    fn written(millis: u64) -> String {
        Rfc3339Millis::from_millis(millis).map(|t| t.to_string()).unwrap_or_default()
    }

    /// 2026-01-01T00:00:00Z, the generator's first event time.
    const NEW_YEAR_2026: u64 = 1_767_225_600_000;

    #[test]
    fn offsets_and_fractions_read_as_utc_milliseconds() {
        for (text, expected) in [
            ("1970-01-01T00:00:00Z", 0),
            ("1970-01-01T00:00:00.001Z", 1),
            ("2026-01-01T00:00:00Z", NEW_YEAR_2026),
            ("2026-01-01T00:00:00.250Z", NEW_YEAR_2026 + 250),
            ("2026-01-01T00:00:00.25Z", NEW_YEAR_2026 + 250),
            ("2026-01-01T00:00:00.2Z", NEW_YEAR_2026 + 200),
            // Digits past the millisecond are dropped, not rounded.
            ("2026-01-01T00:00:00.2509Z", NEW_YEAR_2026 + 250),
            ("2026-01-01T00:00:00.999999999Z", NEW_YEAR_2026 + 999),
            ("2026-01-01T00:00:00.000000000000000000001Z", NEW_YEAR_2026),
            ("2026-01-01T01:00:00+01:00", NEW_YEAR_2026),
            ("2026-01-01T01:00:00.250+01:00", NEW_YEAR_2026 + 250),
            ("2025-12-31T19:00:00-05:00", NEW_YEAR_2026),
            ("2026-01-01T05:30:00+05:30", NEW_YEAR_2026),
            ("2025-12-31T23:15:00-00:45", NEW_YEAR_2026),
            ("2026-01-01T23:59:00+23:59", NEW_YEAR_2026),
            ("2025-12-31T00:01:00-23:59", NEW_YEAR_2026),
            // -00:00 is UTC with an unknown local offset (RFC 3339, 4.3).
            ("2026-01-01T00:00:00-00:00", NEW_YEAR_2026),
            ("2026-01-01t00:00:00z", NEW_YEAR_2026),
            // Leap years: a 29th of February, 1900 (not leap) and 2000 (leap).
            ("2024-02-29T00:00:00Z", 1_709_164_800_000),
            ("2024-03-01T00:00:00Z", 1_709_251_200_000),
            ("2000-02-29T12:00:00Z", 951_825_600_000),
            ("2000-12-31T00:00:00Z", 978_220_800_000),
            ("2100-03-01T00:00:00Z", 4_107_542_400_000),
            // Before 1970 in local time, after it in UTC.
            ("1969-12-31T23:30:00-01:00", 1_800_000),
            // A leap second: the last millisecond of its day.
            ("2016-12-31T23:59:60Z", 1_483_228_799_999),
            ("2016-12-31T23:59:60.5Z", 1_483_228_799_999),
            ("2017-01-01T00:59:60+01:00", 1_483_228_799_999),
            ("9999-12-31T23:59:59.999Z", LAST_MILLIS),
            ("9999-12-31T23:59:59.999999Z", LAST_MILLIS),
        ] {
            assert_eq!(millis(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn malformed_times_are_refused_with_the_part_that_is_wrong() {
        for (text, why) in [
            ("", "expected the year as 4 digits at character 1, found the end"),
            ("1767225600000", "expected '-' after the year at character 5, found \"225600\""),
            ("26-01-01T00:00:00Z", "expected the year as 4 digits at character 1, found \"26-01-\""),
            ("2026-1-01T00:00:00Z", "expected the month as 2 digits at character 6, found \"1-01T0\""),
            ("2026-00-01T00:00:00Z", "month 0 is out of range"),
            ("2026-13-01T00:00:00Z", "month 13 is out of range"),
            ("2026-01-00T00:00:00Z", "day 0 is out of range for 2026-01"),
            ("2026-01-32T00:00:00Z", "day 32 is out of range for 2026-01"),
            ("2026-02-29T00:00:00Z", "day 29 is out of range for 2026-02"),
            ("1900-02-29T00:00:00Z", "day 29 is out of range for 1900-02"),
            ("2026-04-31T00:00:00Z", "day 31 is out of range for 2026-04"),
            ("2026-01-01", "expected 'T' between the date and the time at character 11, found the end"),
            ("2026-01-01 00:00:00Z", "expected 'T' between the date and the time at character 11, found \" 00:00\""),
            ("2026-01-01T24:00:00Z", "hour 24 is out of range"),
            ("2026-01-01T00:60:00Z", "minute 60 is out of range"),
            ("2026-01-01T00:00:61Z", "second 61 is out of range"),
            ("2026-01-01T00:00Z", "expected ':' after the minute at character 17, found \"Z\""),
            ("2026-01-01T0:00:00Z", "expected the hour as 2 digits at character 12, found \"0:00:0\""),
            ("2026-01-01T00:00:00", "expected the offset (Z, +hh:mm or -hh:mm) at character 20, found the end"),
            ("2026-01-01T00:00:00.Z", "expected digits after '.' at character 21, found \"Z\""),
            ("2026-01-01T00:00:00,5Z", "expected the offset (Z, +hh:mm or -hh:mm) at character 20, found \",5Z\""),
            ("2026-01-01T00:00:00+0100", "expected ':' in the offset at character 23, found \"00\""),
            ("2026-01-01T00:00:00+01", "expected ':' in the offset at character 23, found the end"),
            ("2026-01-01T00:00:00+24:00", "offset +24:00 is out of range"),
            ("2026-01-01T00:00:00+01:60", "offset +01:60 is out of range"),
            ("2026-01-01T00:00:00ZZ", "unexpected text after the offset at character 21"),
            ("2026-01-01T00:00:00Z ", "unexpected text after the offset at character 21"),
            (" 2026-01-01T00:00:00Z", "expected the year as 4 digits at character 1, found \" 2026-\""),
            ("2026-01-01T23:59:60Z", "second 60 (a leap second) is only valid at 23:59:60 UTC on the last day of a month"),
            ("2016-12-31T23:59:60+01:00", "second 60 (a leap second) is only valid at 23:59:60 UTC on the last day of a month"),
            ("1969-12-31T23:59:59.999Z", "it is before 1970-01-01T00:00:00Z, where event times start"),
            ("1970-01-01T00:30:00+01:00", "it is before 1970-01-01T00:00:00Z, where event times start"),
            ("9999-12-31T23:59:59-00:01", "it is after 9999-12-31T23:59:59.999Z"),
            ("２０２６-01-01T00:00:00Z", "expected the year as 4 digits at character 1, found \"２０\""),
        ] {
            assert_eq!(millis(text), Err(format!("not an RFC 3339 time: {why}; {EXPECTED_FORM}")), "{text:?}");
        }
    }

    #[test]
    fn times_are_written_in_utc_with_milliseconds_and_read_back() {
        assert_eq!(written(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(written(NEW_YEAR_2026 + 250), "2026-01-01T00:00:00.250Z");
        assert_eq!(written(1_709_164_800_000 + 86_399_999), "2024-02-29T23:59:59.999Z");
        assert_eq!(written(951_825_600_000), "2000-02-29T12:00:00.000Z");
        assert_eq!(written(LAST_MILLIS), "9999-12-31T23:59:59.999Z");
        assert_eq!(Rfc3339Millis::from_millis(LAST_MILLIS + 1), None);
        assert_eq!(format!("{:?}", Rfc3339Millis(5)), "Rfc3339Millis(1970-01-01T00:00:00.005Z)");
        let mut rng = Rng(0x5851_f42d_4c95_7f2d);
        for round in 0..20_000u64 {
            // Every day near the epoch, then instants anywhere up to the last.
            let millis = if round < 5_000 { round * 86_400_000 + round % 1_000 } else { rng.next() % (LAST_MILLIS + 1) };
            let text = written(millis);
            assert_eq!(self::millis(&text), Ok(millis), "{text}");
        }
    }

    /// Parsing and writing agree with the `time` crate's RFC 3339 (an independent implementation)
    /// on random instants written with random offsets and fractions, and on the same texts
    /// changed a character at a time: where one accepts a text the other gives the same instant.
    #[test]
    fn parsing_and_writing_agree_with_the_time_crate() {
        use time::format_description::well_known::Rfc3339;
        use time::{OffsetDateTime, UtcOffset};
        let theirs = |text: &str| -> Option<u64> {
            let t = OffsetDateTime::parse(text, &Rfc3339).ok()?;
            u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
        };
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let pieces = ["0", "9", "1", "3", "-", ":", "+", "T", "Z", ".", " ", "60", "29", "02-29", "00", "24", "13"];
        let (mut both, mut refused) = (0, 0);
        for _ in 0..20_000 {
            let millis = rng.next() % (LAST_MILLIS + 1);
            let ours = written(millis);
            let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000).unwrap();
            assert_eq!(theirs(&ours), Some(millis), "{ours}");
            // The same instant at another offset, with 0 to 9 fraction digits.
            let offset_minutes = rng.below(2 * 24 * 60 - 1) as i32 - (24 * 60 - 1);
            let offset = UtcOffset::from_whole_seconds(offset_minutes * 60).unwrap();
            // Past 9999 in local time: `time` cannot hold it, and RFC 3339 cannot write it.
            let Some(local) = t.checked_to_offset(offset) else { continue };
            let fraction_digits = rng.below(10);
            let mut text = local.format(&Rfc3339).unwrap();
            // `time` writes the fraction only when there is one; rewrite it with the digits chosen.
            let offset_at = text.rfind(['Z', '+', '-']).unwrap();
            let seconds_end = text[..offset_at].find('.').unwrap_or(offset_at);
            let nanos = format!("{:09}", local.nanosecond());
            let fraction = if fraction_digits == 0 { String::new() } else { format!(".{}", &nanos[..fraction_digits]) };
            text = format!("{}{}{}", &text[..seconds_end], fraction, &text[offset_at..]);
            let truncated = millis - millis % 10u64.pow(3u32.saturating_sub(fraction_digits as u32));
            assert_eq!(self::millis(&text), Ok(truncated), "{text}");
            assert_eq!(theirs(&text), Some(truncated), "{text}");
            // One character changed: if both read it, they read the same instant.
            let mut changed: Vec<char> = text.chars().collect();
            let at = rng.below(changed.len());
            let piece: Vec<char> = rng.pick(&pieces).chars().collect();
            match rng.below(3) {
                0 => {
                    changed.remove(at);
                }
                1 => {
                    changed.splice(at..=at, piece);
                }
                _ => {
                    changed.splice(at..at, piece);
                }
            }
            let changed: String = changed.into_iter().collect();
            match (self::millis(&changed).ok(), theirs(&changed)) {
                (Some(a), Some(b)) => {
                    assert_eq!(a, b, "{changed}");
                    both += 1;
                }
                (Some(a), None) => panic!("{changed} read as {a} here, refused by time"),
                (None, _) => refused += 1,
            }
        }
        assert!(both > 1_000 && refused > 5_000, "{both} {refused}");
    }

    #[test]
    fn fields_read_in_place_as_the_general_path_does() {
        let line = "2026-01-01T01:00:00.250+01:00,x";
        assert_eq!(Rfc3339Millis::parse_at(line, 0), Some((Rfc3339Millis(NEW_YEAR_2026 + 250), 29)));
        assert_eq!(Rfc3339Millis::parse_at("2026-13-01T00:00:00Z,x", 0), None);
        assert_eq!(Rfc3339Millis::parse_at("\"2026-01-01T00:00:00Z\",x", 0), None);
        let json = r#"{"ts":"2026-01-01T00:00:00Z","x":1}"#;
        assert_eq!(Rfc3339Millis::parse_json_at(json, 6), Some((Rfc3339Millis(NEW_YEAR_2026), 28)));
        assert_eq!(Rfc3339Millis::parse_json_at(r#"{"ts":1767225600000}"#, 6), None);
        assert_eq!(Rfc3339Millis::parse_json_at(r#"{"ts":"2026-01-01T00:00:00"}"#, 6), None);
    }

    #[test]
    fn serde_writes_text_for_json_and_milliseconds_for_bincode() {
        let time = Rfc3339Millis(NEW_YEAR_2026 + 250);
        assert_eq!(serde_json::to_string(&time).unwrap(), "\"2026-01-01T00:00:00.250Z\"");
        assert_eq!(serde_json::from_str::<Rfc3339Millis>("\"2026-01-01T01:00:00.25+01:00\"").unwrap(), time);
        let refused = serde_json::from_str::<Rfc3339Millis>("\"2026-01-01\"").unwrap_err().to_string();
        assert!(refused.starts_with("not an RFC 3339 time: expected 'T'") && refused.contains("found \"2026-01-01\""), "{refused}");
        let number = serde_json::from_str::<Rfc3339Millis>("1767225600000").unwrap_err().to_string();
        assert!(number.starts_with("invalid type: integer `1767225600000`, expected an RFC 3339 time as a string"), "{number}");
        let config = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(time, config).unwrap();
        assert_eq!(bytes, bincode::serde::encode_to_vec(time.millis(), config).unwrap());
        assert_eq!(bincode::serde::decode_from_slice::<Rfc3339Millis, _>(&bytes, config).unwrap().0, time);
        let too_late = bincode::serde::encode_to_vec(LAST_MILLIS + 1, config).unwrap();
        assert!(bincode::serde::decode_from_slice::<Rfc3339Millis, _>(&too_late, config).is_err());
    }
}
