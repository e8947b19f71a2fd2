//! How records are read from and written to text: CSV and JSON lines.
//!
//! A record type implements [`CsvRecord`] (usually through [`csv_record!`](crate::csv_record))
//! and serde's traits; the file connectors pick the format from the file extension. CSV is
//! comma-separated with an optional header line; fields that hold a comma, quote or line break
//! are quoted with `"` and inner quotes doubled (RFC 4180). Parsing never panics: a bad line
//! yields a reason, and the source sends it to the dead-letter output.

use serde::{Deserialize, Serialize};

/// A field of a CSV record: parsed from and written to one column.
pub trait CsvField: Sized {
    /// Parses the column text (without quotes).
    fn parse_field(text: &str) -> Result<Self, String>;
    /// Appends the column text (quoting, if needed, is done by the caller).
    fn write_field(&self, out: &mut String);
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
                use std::fmt::Write;
                let _ = write!(out, "{self}");
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

/// The value of 1 to `max_digits` ASCII digits, or `None` for anything else (including the empty
/// text). With at most `max_digits` digits, the value is below `10^max_digits`, so it fits the
/// type whose maximum has `max_digits + 1` digits.
#[inline]
fn parse_plain_digits(bytes: &[u8], max_digits: usize) -> Option<u64> {
    if bytes.is_empty() || bytes.len() > max_digits {
        return None;
    }
    let mut value = 0u64;
    for &b in bytes {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        value = value * 10 + u64::from(digit);
    }
    Some(value)
}

/// The text `Display` gives integers (and `true`/`false`), without `fmt`'s machinery, which was
/// most of what writing a CSV line cost: a sink encodes every result it writes.
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
}

/// A record that can be read from and written to a CSV line.
pub trait CsvRecord: Sized {
    /// Column names, in order.
    fn csv_columns() -> Vec<&'static str>;
    /// Builds a record from the fields of one line (already split and unquoted).
    fn from_csv_fields(fields: &[&str]) -> Result<Self, String>;
    /// Appends the record as one CSV line, without the line break.
    fn write_csv(&self, out: &mut String);

    /// Builds a record from one CSV line (without its line break): splits and unquotes it, then
    /// [`from_csv_fields`](CsvRecord::from_csv_fields). [`csv_record!`](crate::csv_record)
    /// records override it with a path that does not allocate for lines without quotes.
    fn from_csv_line(line: &str) -> Result<Self, String> {
        from_csv_line_general(line)
    }

    /// The header line, without the line break.
    fn csv_header() -> String {
        Self::csv_columns().join(",")
    }
}

/// Appends a field to a CSV line, quoting it when it holds a delimiter, quote or line break.
pub fn push_csv_field<F: CsvField>(field: &F, out: &mut String) {
    let start = out.len();
    field.write_field(out);
    if out.as_bytes()[start..].iter().any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r')) {
        let text = out[start..].to_string();
        out.truncate(start);
        out.push('"');
        out.push_str(&text.replace('"', "\"\""));
        out.push('"');
    }
}

/// Splits one CSV line into fields. The common case (no quotes) borrows from the line; a quoted
/// line is unquoted into `scratch`. Returns the number of fields.
pub fn split_csv_line<'a>(line: &'a str, fields: &mut Vec<std::borrow::Cow<'a, str>>) -> Result<usize, String> {
    fields.clear();
    if !line.contains('"') {
        fields.extend(line.split(',').map(std::borrow::Cow::Borrowed));
        return Ok(fields.len());
    }
    let mut chars = line.chars().peekable();
    let mut field = String::new();
    let mut quoted = false;
    let mut at_field_start = true;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (false, '"') if at_field_start => {
                quoted = true;
                at_field_start = false;
            }
            (false, ',') => {
                fields.push(std::mem::take(&mut field).into());
                at_field_start = true;
            }
            (true, '"') => {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    quoted = false;
                    if !matches!(chars.peek(), None | Some(',')) {
                        return Err("unexpected text after a closing quote".into());
                    }
                }
            }
            (_, c) => {
                field.push(c);
                at_field_start = false;
            }
        }
    }
    if quoted {
        return Err("unterminated quoted field".into());
    }
    fields.push(field.into());
    Ok(fields.len())
}

/// Splits a line that holds no quote into exactly `N` fields, borrowing from the line, without
/// allocating. `None` when the line holds a quote or has another number of fields: the caller
/// then takes the general path ([`split_csv_line`]), which also words the errors.
///
/// The line is scanned eight bytes at a time: a word's commas and quotes are found with a few
/// integer operations instead of a comparison per byte.
#[inline]
pub fn split_plain_line<const N: usize>(line: &str) -> Option<[&str; N]> {
    let bytes = line.as_bytes();
    let mut fields = [""; N];
    let mut filled = 0;
    let mut start = 0;
    let mut cut = |word: u64, base: usize| -> Option<()> {
        if byte_positions(word, b'"') != 0 {
            return None;
        }
        let mut commas = byte_positions(word, b',');
        while commas != 0 {
            let end = base + (commas.trailing_zeros() / 8) as usize;
            // Commas are ASCII, so every cut is at a character boundary.
            *fields.get_mut(filled)? = line.get(start..end)?;
            filled += 1;
            start = end + 1;
            commas &= commas - 1;
        }
        Some(())
    };
    let mut chunks = bytes.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut chunks {
        cut(u64::from_le_bytes(chunk.try_into().ok()?), base)?;
        base += 8;
    }
    let rest = chunks.remainder().len();
    if rest > 0 {
        let word = match bytes.len().checked_sub(8) {
            // The line's last eight bytes, shifted so that the bytes already scanned fall out and
            // zeros (neither comma nor quote) come in at the top.
            Some(from) => u64::from_le_bytes(bytes[from..].try_into().ok()?) >> (8 * (8 - rest)),
            None => {
                let mut last = [0u8; 8];
                last[..rest].copy_from_slice(bytes);
                u64::from_le_bytes(last)
            }
        };
        cut(word, base)?;
    }
    if filled + 1 != N {
        return None;
    }
    fields[filled] = line.get(start..)?;
    Some(fields)
}

/// The high bit of each byte of `word` (little-endian) that equals `byte`, and no other bit.
#[inline]
fn byte_positions(word: u64, byte: u8) -> u64 {
    const LOW_SEVEN: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let x = word ^ (u64::from(byte) * 0x0101_0101_0101_0101);
    // Per byte: the high bit of `(x & 0x7f) + 0x7f` is set iff its low seven bits are not all
    // zero, with no carry into the next byte; or-ing `x` adds its own high bit.
    !(((x & LOW_SEVEN) + LOW_SEVEN) | x | LOW_SEVEN)
}

/// Parses column `index` (named `name`) of a record, naming the column in the error.
#[inline]
pub fn parse_column<F: CsvField>(fields: &[&str], index: usize, name: &str) -> Result<F, String> {
    F::parse_field(fields[index]).map_err(|e| format!("column {} ({name}): {e} in {:?}", index + 1, fields[index]))
}

/// [`CsvRecord::from_csv_line`]'s general path: any line, quoted or not, split into a vector.
/// For records that override `from_csv_line` with a fast path and fall back to this one.
pub fn from_csv_line_general<T: CsvRecord>(line: &str) -> Result<T, String> {
    let mut fields = Vec::with_capacity(16);
    split_csv_line(line, &mut fields)?;
    let refs: Vec<&str> = fields.iter().map(|f| f.as_ref()).collect();
    T::from_csv_fields(&refs)
}

/// Declares a struct that is a [`CsvRecord`] and a serde record, with the columns in field order.
///
/// ```
/// paystream_engine::csv_record! {
///     /// Payments per merchant.
///     #[derive(Clone, Debug, PartialEq)]
///     pub struct MerchantCount {
///         pub merchant_id: u64,
///         pub count: u64,
///     }
/// }
/// use paystream_engine::CsvRecord;
/// let mut line = String::new();
/// MerchantCount { merchant_id: 7, count: 3 }.write_csv(&mut line);
/// assert_eq!(line, "7,3");
/// assert_eq!(MerchantCount::csv_header(), "merchant_id,count");
/// assert_eq!(MerchantCount::from_csv_fields(&["7", "3"]), Ok(MerchantCount { merchant_id: 7, count: 3 }));
/// ```
#[macro_export]
macro_rules! csv_record {
    ($($body:tt)*) => {
        $crate::__csv_record_with_serde! { "paystream_engine::__private::serde", $($body)* }
    };
}

/// [`csv_record!`] with the path under which the user's crate reaches serde; the facade crate
/// passes its own re-export so users need not depend on serde themselves.
#[doc(hidden)]
#[macro_export]
macro_rules! __csv_record_with_serde {
    (
        $serde:literal,
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$fmeta:meta])* $fvis:vis $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive($crate::__private::serde::Serialize, $crate::__private::serde::Deserialize)]
        #[serde(crate = $serde)]
        $vis struct $name {
            $( $(#[$fmeta])* $fvis $field : $ty ),*
        }

        impl $crate::record::CsvRecord for $name {
            fn csv_columns() -> Vec<&'static str> {
                vec![$(stringify!($field)),*]
            }
            #[allow(unused_assignments)]
            fn from_csv_fields(fields: &[&str]) -> Result<Self, String> {
                const COLUMNS: &[&str] = &[$(stringify!($field)),*];
                if fields.len() != COLUMNS.len() {
                    return Err(format!("expected {} columns ({}), found {}", COLUMNS.len(), COLUMNS.join(","), fields.len()));
                }
                let mut index = 0usize;
                Ok($name {
                    $( $field: {
                        let value = $crate::record::parse_column::<$ty>(fields, index, stringify!($field))?;
                        index += 1;
                        value
                    } ),*
                })
            }
            fn from_csv_line(line: &str) -> Result<Self, String> {
                const COLUMNS: usize = <[&str]>::len(&[$(stringify!($field)),*]);
                // The common line, unquoted with the right number of fields, is split on the stack.
                match $crate::record::split_plain_line::<COLUMNS>(line) {
                    Some(fields) => Self::from_csv_fields(&fields),
                    None => $crate::record::from_csv_line_general::<Self>(line),
                }
            }
            fn write_csv(&self, out: &mut String) {
                let mut first = true;
                $(
                    if !first { out.push(','); }
                    first = false;
                    $crate::record::push_csv_field(&self.$field, out);
                )*
                let _ = first;
            }
        }
    };
}

/// A record that could not be read: where it was, what it said and why it was refused.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The job's name for the source (`payments`).
    pub source: String,
    /// The file (or other origin) the record came from.
    pub origin: String,
    /// 1-based line number in that file.
    pub line: u64,
    /// Why it was refused.
    pub reason: String,
    /// The raw text of the record.
    pub raw: String,
}

impl CsvRecord for DeadLetter {
    fn csv_columns() -> Vec<&'static str> {
        vec!["source", "origin", "line", "reason", "raw"]
    }
    fn from_csv_fields(fields: &[&str]) -> Result<Self, String> {
        if fields.len() != 5 {
            return Err(format!("expected 5 columns, found {}", fields.len()));
        }
        Ok(DeadLetter {
            source: fields[0].into(),
            origin: fields[1].into(),
            line: parse_column(fields, 2, "line")?,
            reason: fields[3].into(),
            raw: fields[4].into(),
        })
    }
    fn write_csv(&self, out: &mut String) {
        push_csv_field(&self.source, out);
        out.push(',');
        push_csv_field(&self.origin, out);
        out.push(',');
        push_csv_field(&self.line, out);
        out.push(',');
        push_csv_field(&self.reason, out);
        out.push(',');
        push_csv_field(&self.raw, out);
    }
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

    fn split(line: &str) -> Result<Vec<String>, String> {
        let mut v = Vec::new();
        split_csv_line(line, &mut v)?;
        Ok(v.into_iter().map(|c| c.into_owned()).collect())
    }

    #[test]
    fn splits_plain_and_quoted_lines() {
        assert_eq!(split("a,b,,c").unwrap(), vec!["a", "b", "", "c"]);
        assert_eq!(split(r#""a,1","say ""hi""",x"#).unwrap(), vec!["a,1", r#"say "hi""#, "x"]);
        assert!(split(r#""open,b"#).is_err());
        assert!(split(r#""a"b,c"#).is_err());
    }

    /// Every line over a small alphabet: the fast splitter agrees with the general one whenever
    /// it answers, and answers for every unquoted line with the right number of fields.
    #[test]
    fn plain_splitter_agrees_with_the_general_one() {
        fn check<const N: usize>(line: &str) {
            let general = split(line).unwrap_or_default();
            match split_plain_line::<N>(line) {
                Some(fields) => assert_eq!(fields.to_vec(), general, "{line:?}"),
                None => assert!(line.contains('"') || general.len() != N, "{line:?} should split into {N}"),
            }
        }
        // "€" and "¢" end in bytes 0xAC and 0xA2: a comma and a quote with the high bit set.
        let alphabet = ["a", ",", "\"", "é", "€", "¢"];
        let mut lines = vec![String::new()];
        let mut layer = vec![String::new()];
        for _ in 0..6 {
            layer = layer.iter().flat_map(|l| alphabet.iter().map(move |c| format!("{l}{c}"))).collect();
            lines.extend(layer.iter().cloned());
        }
        // Longer lines cross the eight-byte words at every offset.
        for n in 0..40 {
            lines.push(format!("{}{}", "x".repeat(n), ",y,z"));
            lines.push(format!("{},{}", "ab,".repeat(n / 3), "é".repeat(n)));
            lines.push(format!("{}\"q\",r", "a".repeat(n)));
        }
        for line in &lines {
            check::<1>(line);
            check::<2>(line);
            check::<3>(line);
            check::<4>(line);
            check::<8>(line);
        }
        assert_eq!(split_plain_line::<3>("1767225599154,t0,38580"), Some(["1767225599154", "t0", "38580"]));
        assert_eq!(split_plain_line::<2>("a,b,c"), None);
        assert_eq!(split_plain_line::<4>("a,b,c"), None);
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

    #[test]
    fn quotes_when_needed() {
        let mut out = String::new();
        push_csv_field(&"a,b".to_string(), &mut out);
        out.push(',');
        push_csv_field(&"plain".to_string(), &mut out);
        assert_eq!(out, r#""a,b",plain"#);
        assert_eq!(split(&out).unwrap(), vec!["a,b", "plain"]);
    }

    #[test]
    fn dead_letter_round_trips() {
        let d = DeadLetter {
            source: "payments".into(),
            origin: "in.csv".into(),
            line: 3,
            reason: "column 2: bad".into(),
            raw: "1,\"x\",y".into(),
        };
        let mut line = String::new();
        d.write_csv(&mut line);
        let fields = split(&line).unwrap();
        let refs: Vec<&str> = fields.iter().map(|s| s.as_str()).collect();
        assert_eq!(DeadLetter::from_csv_fields(&refs).unwrap(), d);
    }
}
