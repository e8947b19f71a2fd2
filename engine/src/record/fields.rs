//! [`CsvField`]: how one field of a record is read from and written to a CSV column, and read
//! in place by the single-pass decoders, with the implementations for integers, `bool`, `f64`,
//! `String` and `Option`.

use super::json::{json_field, plain_json_integer, plain_json_string, PlainJsonValue};
use super::scan::{parse_plain_digits, scan_digits};
use super::split::plain_field;

/// A field of a CSV record: parsed from and written to one column.
pub trait CsvField: Sized {
    /// Parses the column text (without quotes).
    fn parse_field(text: &str) -> Result<Self, String>;
    /// Appends the column text (quoting, if needed, is done by the caller).
    fn write_field(&self, out: &mut String);

    /// Reads the field that starts at byte `at` of a CSV line without quotes, for
    /// [`csv_record!`](crate::csv_record)'s single pass over a line: the value and the index just
    /// past the field's text, where the caller then requires a `,` or the line's end.
    ///
    /// An answer `Some((value, end))` must mean that `line[at..end]` holds no `,` and no `"`, and
    /// that `parse_field(&line[at..end])` gives `Ok(value)`. `None` sends the line to the general
    /// path ([`from_csv_line_general`]), which also words the errors, so an implementation may
    /// refuse whatever it does not read quickly. The default finds the next `,` (refusing a field
    /// with a `"`) and calls `parse_field`.
    ///
    /// [`from_csv_line_general`]: super::from_csv_line_general
    #[inline(always)]
    fn parse_at(line: &str, at: usize) -> Option<(Self, usize)> {
        let text = plain_field(line, at)?;
        Some((Self::parse_field(text).ok()?, at + text.len()))
    }

    /// Reads the JSON value that starts at byte `at` of a JSON line, for
    /// [`csv_record!`](crate::csv_record)'s single pass over a line: the value and the index just
    /// past it, where the caller then requires a `,` or `}`.
    ///
    /// An answer `Some((value, end))` must be the value serde_json gives this type for the text
    /// `line[at..end]` inside the line; `None` leaves the whole line to serde_json, which also
    /// words the errors, so an implementation may refuse whatever it does not read quickly. The
    /// default reads the value through the type's `Deserialize` ([`json_field`]); the integers,
    /// and types that read a plain string themselves ([`plain_json_string`]), skip serde's
    /// plumbing.
    #[inline(always)]
    fn parse_json_at(line: &str, at: usize) -> Option<(Self, usize)>
    where
        Self: serde::de::DeserializeOwned,
    {
        json_field(line, at)
    }
}

macro_rules! int_field {
    ($($t:ty),*) => {$(
        impl CsvField for $t {
            #[inline]
            fn parse_field(text: &str) -> Result<Self, String> {
                // Plain digits short enough that they cannot overflow: read them directly. Anything
                // else (spaces, signs, overflow, junk) takes the standard parser and its message.
                if let Some(value) = parse_plain_digits(text.as_bytes(), <$t>::MAX.ilog10() as usize) {
                    return Ok(value as $t);
                }
                text.trim().parse::<$t>().map_err(|e| format!("invalid {}: {e}", stringify!($t)))
            }
            fn write_field(&self, out: &mut String) {
                WriteDecimal::write_decimal(self, out)
            }
            /// The digits `parse_field` reads directly, read in place; anything else is refused.
            #[inline(always)]
            fn parse_at(line: &str, at: usize) -> Option<(Self, usize)> {
                let (value, end) = scan_digits(line.as_bytes(), at, <$t>::MAX.ilog10() as usize)?;
                Some((value as $t, end))
            }
            /// A plain JSON integer, as serde_json reads it; any other value through
            /// [`json_field`].
            #[inline(always)]
            fn parse_json_at(line: &str, at: usize) -> Option<(Self, usize)> {
                match plain_json_integer(line, at) {
                    Some((PlainJsonValue::Unsigned(n), end)) => Some((<$t>::try_from(n).ok()?, end)),
                    Some(_) => None,
                    None => json_field(line, at),
                }
            }
        }
    )*};
}
int_field!(u8, u16, u32, u64, usize);

macro_rules! signed_field {
    ($($t:ty),*) => {$(
        impl CsvField for $t {
            #[inline]
            fn parse_field(text: &str) -> Result<Self, String> {
                let (negative, digits) = match text.as_bytes() {
                    [b'-', rest @ ..] => (true, rest),
                    bytes => (false, bytes),
                };
                if let Some(magnitude) = parse_plain_digits(digits, <$t>::MAX.ilog10() as usize) {
                    let value = magnitude as $t;
                    return Ok(if negative { -value } else { value });
                }
                text.trim().parse::<$t>().map_err(|e| format!("invalid {}: {e}", stringify!($t)))
            }
            fn write_field(&self, out: &mut String) {
                // As `Display` writes it, without the formatting machinery (see `WriteDecimal`).
                WriteDecimal::write_decimal(self, out)
            }
            /// What `parse_field` reads directly (digits after an optional `-`), read in place;
            /// anything else is refused.
            #[inline(always)]
            fn parse_at(line: &str, at: usize) -> Option<(Self, usize)> {
                let bytes = line.as_bytes();
                let negative = bytes.get(at) == Some(&b'-');
                let (magnitude, end) = scan_digits(bytes, at + usize::from(negative), <$t>::MAX.ilog10() as usize)?;
                let value = magnitude as $t;
                Some((if negative { -value } else { value }, end))
            }
            /// A plain JSON integer, as serde_json reads it; any other value through
            /// [`json_field`].
            #[inline(always)]
            fn parse_json_at(line: &str, at: usize) -> Option<(Self, usize)> {
                match plain_json_integer(line, at) {
                    Some((PlainJsonValue::Unsigned(n), end)) => Some((<$t>::try_from(n).ok()?, end)),
                    Some((PlainJsonValue::Negative(n), end)) => Some((<$t>::try_from(n).ok()?, end)),
                    Some(_) => None,
                    None => json_field(line, at),
                }
            }
        }
    )*};
}
signed_field!(i8, i16, i32, i64);

impl CsvField for bool {
    fn parse_field(text: &str) -> Result<Self, String> {
        text.trim().parse::<bool>().map_err(|e| format!("invalid bool: {e}"))
    }
    fn write_field(&self, out: &mut String) {
        out.push_str(if *self { "true" } else { "false" })
    }
}

/// The text `Display` gives integers (and `true`/`false`), without `fmt`'s machinery, which
/// costs far more than the digits themselves: a sink encodes every result it writes (figures in
/// BENCHMARKS.md, "Figures behind choices in the code").
trait WriteDecimal {
    fn write_decimal(&self, out: &mut String);
}

macro_rules! itoa_decimal {
    ($($t:ty),*) => {$(
        impl WriteDecimal for $t {
            fn write_decimal(&self, out: &mut String) {
                out.push_str(itoa::Buffer::new().format(*self))
            }
        }
    )*};
}
itoa_decimal!(u8, u16, u32, u64, i8, i16, i32, i64, usize);

impl WriteDecimal for bool {
    fn write_decimal(&self, out: &mut String) {
        out.push_str(if *self { "true" } else { "false" })
    }
}

impl CsvField for f64 {
    fn parse_field(text: &str) -> Result<Self, String> {
        text.trim().parse::<f64>().map_err(|e| format!("invalid number: {e}"))
    }
    fn write_field(&self, out: &mut String) {
        use std::fmt::Write;
        // Six decimals: enough for rates and averages, stable across platforms.
        let _ = write!(out, "{:.6}", self);
    }
}

impl CsvField for String {
    #[inline]
    fn parse_field(text: &str) -> Result<Self, String> {
        Ok(text.to_string())
    }
    fn write_field(&self, out: &mut String) {
        out.push_str(self)
    }
    #[inline(always)]
    fn parse_at(line: &str, at: usize) -> Option<(Self, usize)> {
        let text = plain_field(line, at)?;
        Some((text.to_string(), at + text.len()))
    }
    #[inline(always)]
    fn parse_json_at(line: &str, at: usize) -> Option<(Self, usize)> {
        plain_json_string(line, at).map(|(text, end)| (text.to_string(), end))
    }
}

impl<T: CsvField> CsvField for Option<T> {
    fn parse_field(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            Ok(None)
        } else {
            T::parse_field(text).map(Some)
        }
    }
    fn write_field(&self, out: &mut String) {
        if let Some(v) = self {
            v.write_field(out)
        }
    }
    #[inline]
    fn parse_at(line: &str, at: usize) -> Option<(Self, usize)> {
        match line.as_bytes().get(at) {
            None | Some(b',') => Some((None, at)),
            // The field is not empty, so `T`'s answer (if it ends at a `,` or the line's end, as
            // the caller checks) is not empty either.
            Some(_) => T::parse_at(line, at).map(|(value, end)| (Some(value), end)),
        }
    }
}

/// Parses column `index` (named `name`) of a record, naming the column in the error.
#[inline]
pub fn parse_column<F: CsvField>(fields: &[&str], index: usize, name: &str) -> Result<F, String> {
    F::parse_field(fields[index]).map_err(|e| format!("column {} ({name}): {e} in {:?}", index + 1, fields[index]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_and_bools_are_written_as_display_writes_them() {
        fn written<T: CsvField>(v: T) -> String {
            let mut out = String::new();
            v.write_field(&mut out);
            out
        }
        for v in [0u64, 7, 10, 1_767_225_600_000, u64::MAX] {
            assert_eq!(written(v), v.to_string());
        }
        for v in [0i64, -1, 42, i64::MIN, i64::MAX] {
            assert_eq!(written(v), v.to_string());
        }
        assert_eq!(
            (written(u8::MAX), written(i32::MIN), written(usize::MAX)),
            (u8::MAX.to_string(), i32::MIN.to_string(), usize::MAX.to_string())
        );
        assert_eq!((written(true), written(false)), ("true".to_string(), "false".to_string()));
    }

    /// The digit fast path gives what the standard parser gives, message included.
    #[test]
    fn integers_parse_as_the_standard_parser_does() {
        fn check<T: CsvField + std::str::FromStr + PartialEq + std::fmt::Debug>(name: &str, text: &str)
        where
            T::Err: std::fmt::Display,
        {
            let expected = text.trim().parse::<T>().map_err(|e| format!("invalid {name}: {e}"));
            assert_eq!(T::parse_field(text), expected, "{name} {text:?}");
        }
        let texts = [
            "",
            "0",
            "00",
            "7",
            "42",
            "99",
            "100",
            "127",
            "128",
            "255",
            "256",
            "-",
            "-0",
            "-1",
            "-99",
            "-128",
            "-129",
            "+5",
            " 5",
            "5 ",
            "5x",
            "x5",
            "1.5",
            "65535",
            "65536",
            "4294967295",
            "4294967296",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "-9223372036854775809",
            "999999999999999999",
            "9999999999999999999",
            "18446744073709551615",
            "18446744073709551616",
            "1767225599154",
            "00000000000000000000001",
            "٣",
        ];
        for text in texts {
            check::<u8>("u8", text);
            check::<u16>("u16", text);
            check::<u32>("u32", text);
            check::<u64>("u64", text);
            check::<usize>("usize", text);
            check::<i8>("i8", text);
            check::<i16>("i16", text);
            check::<i32>("i32", text);
            check::<i64>("i64", text);
        }
        for text in ["true", "false", " true", "True", "1", ""] {
            check::<bool>("bool", text);
        }
    }
}
