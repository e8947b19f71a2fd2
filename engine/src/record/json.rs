//! The JSON lines fast path: reading the plain values (strings without escapes, integers) of a
//! JSON line in place, exactly as serde_json would read them, and leaving every other value, and
//! so the line, to serde_json.

use super::scan::{first_marked, parse_plain_digits, scan_digits, slice, StringStops};

/// The text of the JSON string that starts (with its opening quote) at byte `at` of a line, and
/// the index just past its closing quote; `None` if there is no string there or it holds an
/// escape or a control character (serde_json then reads the line): for
/// [`CsvField::parse_json_at`] implementations. The text is what serde_json reads for it.
///
/// [`CsvField::parse_json_at`]: super::CsvField::parse_json_at
#[inline(always)]
pub fn plain_json_string(line: &str, at: usize) -> Option<(&str, usize)> {
    let bytes = line.as_bytes();
    if bytes.get(at) != Some(&b'"') {
        return None;
    }
    let close = first_marked::<StringStops>(bytes, at + 1)?;
    // The quotes are ASCII, so the text between them is at character boundaries.
    (bytes[close] == b'"').then(|| slice(line, at + 1, close).map(|text| (text, close + 1)))?
}

/// The plain JSON integer (see [`PlainJsonValue`]) that starts at byte `at` of a line, followed
/// by `,` or `}`: its value and the index just past it; `None` for any other value.
#[inline(always)]
pub(super) fn plain_json_integer(line: &str, at: usize) -> Option<(PlainJsonValue<'_>, usize)> {
    if matches!(line.as_bytes().get(at), Some(b'"' | b'{' | b'[')) {
        return None;
    }
    match plain_json_value(line, at) {
        PlainOrNot::Plain(value, end) => Some((value, end)),
        _ => None,
    }
}

/// The index just past `key` if the line holds it at `at`, else `None`. For
/// [`csv_record!`](crate::csv_record)'s JSON fast path, where the key text is `{"name":` or
/// `,"name":` (the byte before the key, the quotes and the colon: one comparison for all).
#[inline(always)]
pub fn json_key(bytes: &[u8], at: usize, key: &str) -> Option<usize> {
    let end = at + key.len();
    (bytes.get(at..end)? == key.as_bytes()).then_some(end)
}

/// The value of type `T` that starts at byte `at` of a JSON line, read as serde_json reads it
/// inside the line, and the index just past it; `None` when the line must be left to serde_json.
/// For [`csv_record!`](crate::csv_record)'s JSON fast path, which requires a `,` or `}` next.
///
/// A string is read up to its closing quote, and refused if an escape or a control character
/// comes first (serde_json then decodes the line, and words the error if there is one). An
/// integer followed by `,` or `}` is read directly when [`PlainJsonValue`] covers it (no leading
/// zero, no `-0`, at most 19 digits, 18 when negative). An object or array is refused. Any other
/// value (another number, `true`, `false`, `null`) is the text up to the next `,` or `}`, which
/// [`json_value`] parses with serde_json; a text that is not one whole JSON value is refused
/// there. Read this way, each value means what it means inside the whole line, so a record built
/// from these values is the one serde_json would build, for a struct whose `Deserialize` is
/// derived without attributes, with the line's keys in the fields' order.
#[inline(always)]
pub fn json_field<T: serde::de::DeserializeOwned>(line: &str, at: usize) -> Option<(T, usize)> {
    match plain_json_value(line, at) {
        PlainOrNot::Plain(value, end) => Some((T::deserialize(value).ok()?, end)),
        PlainOrNot::Other => other_json_value(line, at),
        PlainOrNot::Refused => None,
    }
}

/// What [`plain_json_value`] found.
enum PlainOrNot<'a> {
    /// A plain value, and the index just past it.
    Plain(PlainJsonValue<'a>, usize),
    /// A value to read with [`other_json_value`].
    Other,
    /// A value that sends the whole line to serde_json.
    Refused,
}

/// The plain value (string or integer) that starts at byte `at` of a JSON line, for [`json_field`].
#[inline(always)]
fn plain_json_value(line: &str, at: usize) -> PlainOrNot<'_> {
    let bytes = line.as_bytes();
    let Some(&first) = bytes.get(at) else {
        return PlainOrNot::Refused;
    };
    match first {
        b'"' => match plain_json_string(line, at) {
            Some((text, end)) => PlainOrNot::Plain(PlainJsonValue::Str(text), end),
            None => PlainOrNot::Refused,
        },
        b'{' | b'[' => PlainOrNot::Refused,
        _ => {
            let negative = first == b'-';
            let digits = at + usize::from(negative);
            match scan_digits(bytes, digits, if negative { 18 } else { 19 }) {
                // No leading zero but `0` itself, no `-0`, and the number ends there.
                Some((magnitude, end))
                    if (bytes[digits] != b'0' || (end == digits + 1 && !negative)) && matches!(bytes.get(end), Some(b',' | b'}')) =>
                {
                    let value = if negative { PlainJsonValue::Negative(-(magnitude as i64)) } else { PlainJsonValue::Unsigned(magnitude) };
                    PlainOrNot::Plain(value, end)
                }
                _ => PlainOrNot::Other,
            }
        }
    }
}

/// [`json_field`] for a value that is not plain: the text up to the next `,` or `}`, read by
/// [`json_value`].
#[cold]
#[inline(never)]
fn other_json_value<T: serde::de::DeserializeOwned>(line: &str, at: usize) -> Option<(T, usize)> {
    let end = at + line.as_bytes().get(at..)?.iter().position(|&b| b == b',' || b == b'}')?;
    Some((json_value(line.get(at..end)?)?, end))
}

/// One value text (without white space around it), read as serde_json reads it inside the line; `None`
/// if serde_json would refuse it.
///
/// Plain integers and strings without escapes or control characters, which are most values of
/// most records, are handed to `T` through [`PlainJsonValue`]; any other text is parsed by
/// serde_json itself.
#[inline]
pub fn json_value<T: serde::de::DeserializeOwned>(text: &str) -> Option<T> {
    match PlainJsonValue::new(text) {
        Some(value) => T::deserialize(value).ok(),
        None => serde_json::from_str(text).ok(),
    }
}

/// A JSON value of the kinds that [`json_value`] reads without serde_json, as a serde
/// `Deserializer` that calls the visitor exactly as serde_json's does for the same text (the
/// same `visit_*` method with the same value) or fails where serde_json fails. Where serde_json
/// would do something else (raw values, 128-bit integers) it fails too, and the caller falls
/// back to serde_json.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PlainJsonValue<'a> {
    /// An integer without sign, fraction or exponent, below 10^19: serde_json visits `u64`.
    Unsigned(u64),
    /// A negative integer without fraction or exponent, down to -(10^18 - 1): serde_json visits `i64`.
    Negative(i64),
    /// A string without escapes or control characters (the text between the quotes): serde_json
    /// visits a borrowed `str`.
    Str(&'a str),
}

impl<'a> PlainJsonValue<'a> {
    /// The value of a JSON text when it is one of the plain kinds, without white space around it.
    #[inline]
    pub fn new(text: &'a str) -> Option<Self> {
        let bytes = text.as_bytes();
        match bytes {
            [b'"', inner @ .., b'"'] => {
                if inner.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\') {
                    return None;
                }
                // The quotes are ASCII, so the inner text is at character boundaries.
                text.get(1..text.len() - 1).map(PlainJsonValue::Str)
            }
            [b'-', digits @ ..] => json_digits(digits, true).map(|n| PlainJsonValue::Negative(-(n as i64))),
            digits => json_digits(digits, false).map(PlainJsonValue::Unsigned),
        }
    }

    fn unexpected(self) -> serde::de::Unexpected<'a> {
        match self {
            PlainJsonValue::Unsigned(n) => serde::de::Unexpected::Unsigned(n),
            PlainJsonValue::Negative(n) => serde::de::Unexpected::Signed(n),
            PlainJsonValue::Str(s) => serde::de::Unexpected::Str(s),
        }
    }

    fn refuse<V, E: serde::de::Error>(self, expected: &str) -> Result<V, E> {
        Err(E::invalid_type(self.unexpected(), &expected))
    }
}

/// The magnitude of a JSON integer without fraction or exponent, from its digits: no leading
/// zero but in `0` itself, which serde_json refuses, and no `-0`, which serde_json reads as a
/// float. At most 19 digits (18 when negative), so that serde_json too reads a `u64` (an `i64`).
#[inline]
fn json_digits(digits: &[u8], negative: bool) -> Option<u64> {
    match digits {
        [b'0'] if !negative => Some(0),
        [b'1'..=b'9', ..] => parse_plain_digits(digits, if negative { 18 } else { 19 }),
        _ => None,
    }
}

macro_rules! plain_json_numbers {
    ($($method:ident),*) => {$(
        fn $method<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            match self {
                PlainJsonValue::Unsigned(n) => visitor.visit_u64(n),
                PlainJsonValue::Negative(n) => visitor.visit_i64(n),
                PlainJsonValue::Str(_) => self.refuse("a number"),
            }
        }
    )*};
}

macro_rules! plain_json_strings {
    ($($method:ident),*) => {$(
        fn $method<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            match self {
                PlainJsonValue::Str(s) => visitor.visit_borrowed_str(s),
                _ => self.refuse("a string"),
            }
        }
    )*};
}

macro_rules! plain_json_refused {
    ($($method:ident),*) => {$(
        fn $method<V: serde::de::Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
            self.refuse(stringify!($method))
        }
    )*};
}

impl<'de> serde::Deserializer<'de> for PlainJsonValue<'de> {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self {
            PlainJsonValue::Unsigned(n) => visitor.visit_u64(n),
            PlainJsonValue::Negative(n) => visitor.visit_i64(n),
            PlainJsonValue::Str(s) => visitor.visit_borrowed_str(s),
        }
    }

    plain_json_numbers!(
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_f32,
        deserialize_f64
    );
    plain_json_strings!(deserialize_char, deserialize_str, deserialize_string, deserialize_identifier);
    plain_json_refused!(deserialize_bool, deserialize_i128, deserialize_u128, deserialize_unit, deserialize_seq, deserialize_map);

    fn deserialize_bytes<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self {
            PlainJsonValue::Str(s) => visitor.visit_borrowed_bytes(s.as_bytes()),
            _ => self.refuse("bytes"),
        }
    }

    fn deserialize_byte_buf<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        // A plain value is never `null`.
        visitor.visit_some(self)
    }

    fn deserialize_unit_struct<V: serde::de::Visitor<'de>>(self, _name: &'static str, _visitor: V) -> Result<V::Value, Self::Error> {
        self.refuse("unit")
    }

    fn deserialize_newtype_struct<V: serde::de::Visitor<'de>>(self, name: &'static str, visitor: V) -> Result<V::Value, Self::Error> {
        // serde_json reads its raw values through a newtype with a private name.
        if name.starts_with('$') {
            return self.refuse("not a raw value");
        }
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_tuple<V: serde::de::Visitor<'de>>(self, _len: usize, _visitor: V) -> Result<V::Value, Self::Error> {
        self.refuse("a tuple")
    }

    fn deserialize_tuple_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.refuse("a tuple")
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.refuse("a struct")
    }

    fn deserialize_enum<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self {
            // A string names a unit variant, as in serde_json: any other kind of variant fails.
            PlainJsonValue::Str(s) => visitor.visit_enum(serde::de::value::BorrowedStrDeserializer::new(s)),
            _ => self.refuse("an enum"),
        }
    }

    fn deserialize_ignored_any<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_unit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::fixtures::{Cents, Kind};

    #[test]
    fn plain_json_values_are_read_as_serde_json_reads_them() {
        fn check<T: serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(text: &str) -> bool {
            let ours = json_value::<T>(text);
            if ours.is_some() {
                assert_eq!(ours, serde_json::from_str::<T>(text).ok(), "{} {text:?}", std::any::type_name::<T>());
            }
            ours.is_some()
        }
        let texts = [
            "0",
            "00",
            "01",
            "-0",
            "-00",
            "1",
            "-1",
            "255",
            "256",
            "-128",
            "-129",
            "4294967295",
            "4294967296",
            "999999999999999999",
            "-999999999999999999",
            "9999999999999999999",
            "-9999999999999999999",
            "18446744073709551615",
            "18446744073709551616",
            "1.5",
            "1e3",
            "-",
            "+1",
            " 1",
            "1 ",
            "\"\"",
            "\"a\"",
            "\"ab\"",
            "\"é\"",
            "\"SALE\"",
            "\"REFUND\"",
            "\"Sale\"",
            "\"TAGGED\"",
            "\"12\"",
            "\"a\u{1}\"",
            "\"a\\\"",
            "\"a\\\"b\"",
            "\"a\"b\"",
            "\"",
            "null",
            "true",
            "false",
            "{}",
            "[]",
            "[1]",
        ];
        let mut answered = 0;
        for text in texts {
            answered += usize::from(check::<u8>(text));
            answered += usize::from(check::<u32>(text));
            answered += usize::from(check::<u64>(text));
            answered += usize::from(check::<u128>(text));
            answered += usize::from(check::<i8>(text));
            answered += usize::from(check::<i64>(text));
            answered += usize::from(check::<i128>(text));
            answered += usize::from(check::<f32>(text));
            answered += usize::from(check::<f64>(text));
            answered += usize::from(check::<bool>(text));
            answered += usize::from(check::<char>(text));
            answered += usize::from(check::<String>(text));
            answered += usize::from(check::<Option<u64>>(text));
            answered += usize::from(check::<Option<String>>(text));
            answered += usize::from(check::<Kind>(text));
            answered += usize::from(check::<Cents>(text));
            answered += usize::from(check::<()>(text));
            answered += usize::from(check::<Vec<u8>>(text));
            answered += usize::from(check::<serde_json::Value>(text));
        }
        assert!(answered > 100, "{answered}");
        assert_eq!(PlainJsonValue::new("12"), Some(PlainJsonValue::Unsigned(12)));
        assert_eq!(PlainJsonValue::new("-12"), Some(PlainJsonValue::Negative(-12)));
        assert_eq!(PlainJsonValue::new("\"x\""), Some(PlainJsonValue::Str("x")));
        assert_eq!(PlainJsonValue::new("-0"), None);
    }
}
