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

    /// Reads the field that starts at byte `at` of a CSV line without quotes, for
    /// [`csv_record!`](crate::csv_record)'s single pass over a line: the value and the index just
    /// past the field's text, where the caller then requires a `,` or the line's end.
    ///
    /// An answer `Some((value, end))` must mean that `line[at..end]` holds no `,` and no `"`, and
    /// that `parse_field(&line[at..end])` gives `Ok(value)`. `None` sends the line to the general
    /// path ([`from_csv_line_general`]), which also words the errors, so an implementation may
    /// refuse whatever it does not read quickly. The default finds the next `,` (refusing a field
    /// with a `"`) and calls `parse_field`.
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

/// The text of the JSON string that starts (with its opening quote) at byte `at` of a line, and
/// the index just past its closing quote; `None` if there is no string there or it holds an
/// escape or a control character (serde_json then reads the line): for
/// [`CsvField::parse_json_at`] implementations. The text is what serde_json reads for it.
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
fn plain_json_integer(line: &str, at: usize) -> Option<(PlainJsonValue<'_>, usize)> {
    if matches!(line.as_bytes().get(at), Some(b'"' | b'{' | b'[')) {
        return None;
    }
    match plain_json_value(line, at) {
        PlainOrNot::Plain(value, end) => Some((value, end)),
        _ => None,
    }
}

/// The text of the unquoted CSV field that starts at byte `at` of a line, up to the next `,` or
/// the line's end, or `None` if it holds a `"`: for [`CsvField::parse_at`] implementations that
/// read the text themselves.
#[inline(always)]
pub fn plain_field(line: &str, at: usize) -> Option<&str> {
    slice(line, at, plain_field_end(line.as_bytes(), at)?)
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
                // As `Display` writes it, without the formatting machinery (a fifth of
                // card-velocity's sink went to `write!` for amounts).
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

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
const LOW_SEVEN: u64 = 0x7f7f_7f7f_7f7f_7f7f;

/// The run of 1 to `max_digits` ASCII digits that starts at `bytes[at]`: its value and the index
/// just past it. `None` if there is no digit there, or more than `max_digits` (then the value
/// might not fit: see [`parse_plain_digits`], whose value this is for the same digits).
///
/// Eight bytes are read at a time where the slice has them: the run's length in the word comes
/// from a mask of its non-digits, and up to eight digits are combined with three multiplications.
#[inline(always)]
fn scan_digits(bytes: &[u8], at: usize, max_digits: usize) -> Option<(u64, usize)> {
    let mut value = 0u64;
    let mut end = at;
    // The first word apart: most numbers end in it.
    if let Some(chunk) = bytes.get(at..at + 8) {
        let word = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        let non_digits = non_digits(word);
        if non_digits != 0 {
            let digits = (non_digits.trailing_zeros() / 8) as usize;
            return (digits > 0 && digits <= max_digits).then(|| (leading_digits_value(word, digits), at + digits));
        }
        if max_digits < 8 {
            return None;
        }
        value = leading_digits_value(word, 8);
        end += 8;
    }
    while let Some(chunk) = bytes.get(end..end + 8) {
        let word = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        let digits = (non_digits(word).trailing_zeros() / 8) as usize;
        if end - at + digits > max_digits {
            return None;
        }
        if digits > 0 {
            // At most `max_digits` (< 20) digits in all: below 10^19, no overflow.
            value = value * POWERS_OF_TEN[digits] + leading_digits_value(word, digits);
            end += digits;
        }
        if digits < 8 {
            return (end > at).then_some((value, end));
        }
    }
    // Fewer than eight bytes left.
    for &b in bytes.get(end..)? {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            break;
        }
        if end - at == max_digits {
            return None;
        }
        value = value * 10 + u64::from(digit);
        end += 1;
    }
    (end > at).then_some((value, end))
}

const POWERS_OF_TEN: [u64; 9] = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000, 100_000_000];

/// The high bit of each byte of `word` that is not an ASCII digit, and no other bit.
#[inline(always)]
fn non_digits(word: u64) -> u64 {
    let low = word & LOW_SEVEN;
    // Per byte, with no carry into the next: the high bit of `low + 0x46` is set iff `low > b'9'`,
    // that of `low + 0x50` iff `low >= b'0'`; a byte with its own high bit set is no digit either.
    let above_nine = low + ONES * u64::from(0x7f - b'9');
    let from_zero = low + ONES * u64::from(0x80 - b'0');
    (word | above_nine | !from_zero) & HIGH_BITS
}

/// The value of the first `count` (1 to 8) bytes of `word` (little-endian), which are ASCII digits.
#[inline(always)]
fn leading_digits_value(word: u64, count: usize) -> u64 {
    // Digit values, the first digit in the lowest byte. The bytes after the digits may borrow from
    // the bytes above them, which the shift drops; it brings in zeros below: leading zero digits.
    let v = word.wrapping_sub(ONES * u64::from(b'0')) << (8 * (8 - count));
    // Pairs of digits, then groups of four, then of eight: each step multiplies a group by its
    // weight and adds the next group, within lanes that do not overflow.
    let v = (v.wrapping_mul(10 << 8 | 1) >> 8) & 0x00ff_00ff_00ff_00ff;
    let v = (v.wrapping_mul(100 << 16 | 1) >> 16) & 0x0000_ffff_0000_ffff;
    v.wrapping_mul(10_000 << 32 | 1) >> 32
}

/// Which bytes [`first_marked`] looks for.
trait ByteClass {
    /// The high bit of each byte of `word` (little-endian) in the class, and no other bit.
    fn marks(word: u64) -> u64;
}

/// The index of the first byte at or after `from` in the class `C`, or `None` if there is none.
#[inline(always)]
fn first_marked<C: ByteClass>(bytes: &[u8], from: usize) -> Option<usize> {
    let matches = C::marks;
    let mut at = from;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let found = matches(u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8])));
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let rest = bytes.len().checked_sub(at).filter(|&rest| rest > 0)?;
    let word = match bytes.len().checked_sub(8) {
        // The last eight bytes, shifted so that the bytes already scanned fall out.
        Some(from) => u64::from_le_bytes(bytes[from..].try_into().unwrap_or([0; 8])) >> (8 * (8 - rest)),
        None => {
            let mut last = [0u8; 8];
            last[..rest].copy_from_slice(&bytes[at..]);
            u64::from_le_bytes(last)
        }
    };
    // Only the `rest` low bytes are the line's.
    let found = matches(word) & ((1u64 << (8 * rest)) - 1);
    (found != 0).then(|| at + (found.trailing_zeros() / 8) as usize)
}

/// Where the unquoted CSV field that starts at `at` ends (its `,` or the line's end), or `None`
/// if it holds a `"`.
#[inline(always)]
fn plain_field_end(bytes: &[u8], at: usize) -> Option<usize> {
    match first_marked::<FieldStops>(bytes, at) {
        Some(end) => (bytes[end] == b',').then_some(end),
        None => Some(bytes.len().max(at)),
    }
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

/// A record that can be read from and written to a CSV line.
pub trait CsvRecord: Sized {
    /// Column names, in order.
    fn csv_columns() -> Vec<&'static str>;
    /// Builds a record from the fields of one line (already split and unquoted).
    fn from_csv_fields(fields: &[&str]) -> Result<Self, String>;
    /// Appends the record as one CSV line, without the line break.
    fn write_csv(&self, out: &mut String);

    /// Builds a record from one CSV line (without its line break): through
    /// [`from_plain_csv_line`](CsvRecord::from_plain_csv_line) if it answers, else by splitting
    /// and unquoting the line, then [`from_csv_fields`](CsvRecord::from_csv_fields).
    fn from_csv_line(line: &str) -> Result<Self, String> {
        match Self::from_plain_csv_line(line) {
            Some(record) => Ok(record),
            None => from_csv_line_general(line),
        }
    }

    /// Builds a record from one CSV line when the line is a plain one (no quote, the right number
    /// of fields, each of a form its type reads in place: see [`CsvField::parse_at`]), or `None`:
    /// the caller then takes the general path ([`from_csv_line_general`]), which also words the
    /// errors. [`csv_record!`](crate::csv_record) records override it with a single pass over the
    /// line that allocates only what the record holds; the answer, when there is one, is the
    /// record the general path would give.
    fn from_plain_csv_line(_line: &str) -> Option<Self> {
        None
    }

    /// Builds a record from one JSON line when the line is the plain object that the file sink
    /// writes for it, or `None`: the caller then decodes the line with serde_json, which also
    /// words the errors. [`csv_record!`](crate::csv_record) records without serde attributes
    /// override it (see [`json_field`]); the answer, when there is one, is the record
    /// serde_json would give.
    fn from_plain_json_line(_line: &str) -> Option<Self> {
        None
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

/// The high bit of each byte of `word` (little-endian) that equals `byte`, and no other bit.
#[inline(always)]
fn byte_positions(word: u64, byte: u8) -> u64 {
    let x = word ^ (u64::from(byte) * ONES);
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

/// The bytes that end a plain JSON string's text: `"`, `\` or a control character (below 0x20).
struct StringStops;

impl ByteClass for StringStops {
    #[inline(always)]
    fn marks(word: u64) -> u64 {
        // Flipping bit 1 maps `"` (0x22) to 0x20 and keeps the control characters below 0x20 (and
        // every other byte at 0x21 or above): the stops other than `\` are then the bytes below
        // 0x21. The high bit of `low + 0x5f` is set iff `low >= 0x21`, with no carry into the next
        // byte; a byte with its own high bit set is no stop.
        let flipped = word ^ (ONES * 0x02);
        let at_least = (flipped & LOW_SEVEN) + ONES * 0x5f;
        byte_positions(word, b'\\') | (!(at_least | flipped) & HIGH_BITS)
    }
}

/// The bytes that end an unquoted CSV field (`,`) or refuse it (`"`).
struct FieldStops;

impl ByteClass for FieldStops {
    #[inline(always)]
    fn marks(word: u64) -> u64 {
        byte_positions(word, b',') | byte_positions(word, b'"')
    }
}

/// `line[start..end]`, or `None` if that is not a slice of the line at character boundaries.
/// (`str::get` with a range was a call of its own where this is inlined.)
#[inline(always)]
fn slice(line: &str, start: usize, end: usize) -> Option<&str> {
    line.get(start..)?.get(..end.checked_sub(start)?)
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

/// Whether an attribute (its tokens inside `#[...]`) may change how serde reads a record: a
/// `serde(...)` attribute, or one behind `cfg_attr`. Records with one take no JSON fast path.
#[doc(hidden)]
#[macro_export]
macro_rules! __attribute_may_be_serde {
    (serde $($rest:tt)*) => {
        true
    };
    (cfg_attr $($rest:tt)*) => {
        true
    };
    ($($other:tt)*) => {
        false
    };
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
        $(#[$($meta:tt)*])*
        $vis:vis struct $name:ident {
            $( $(#[$($fmeta:tt)*])* $fvis:vis $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$($meta)*])*
        #[derive($crate::__private::serde::Serialize, $crate::__private::serde::Deserialize)]
        #[serde(crate = $serde)]
        $vis struct $name {
            $( $(#[$($fmeta)*])* $fvis $field : $ty ),*
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
            #[allow(unused_assignments, unused_mut, unused_variables)]
            #[inline]
            fn from_plain_csv_line(line: &str) -> Option<Self> {
                const COLUMNS: usize = <[&str]>::len(&[$(stringify!($field)),*]);
                // One pass, field after field, each read in place by its type. A line read here
                // holds no quote (no field read holds one) and exactly `COLUMNS` fields (a `,`
                // between fields, none inside), so the general path would split it into these
                // very fields and parse each as `parse_at` did: the record is the same.
                let bytes = line.as_bytes();
                let mut at = 0usize;
                let mut column = 0usize;
                let record = $name {
                    $( $field: {
                        if column > 0 {
                            if bytes.get(at) != Some(&b',') {
                                return None;
                            }
                            at += 1;
                        }
                        column += 1;
                        let (value, end) = <$ty as $crate::record::CsvField>::parse_at(line, at)?;
                        at = end;
                        value
                    } ),*
                };
                (COLUMNS > 0 && at == bytes.len()).then_some(record)
            }
            #[allow(unused_assignments)]
            fn from_plain_json_line(line: &str) -> Option<Self> {
                // A serde attribute may rename, skip or reinterpret fields: serde_json alone then.
                const SERDE_ATTRIBUTES: bool = false
                    $( || $crate::__attribute_may_be_serde!($($meta)*) )*
                    $( $( || $crate::__attribute_may_be_serde!($($fmeta)*) )* )*;
                const FIELDS: usize = <[&str]>::len(&[$(stringify!($field)),*]);
                if SERDE_ATTRIBUTES || FIELDS == 0 {
                    return None;
                }
                // One pass over `{"name0":value0,"name1":value1,...}`: the keys in field order,
                // each once, no white space (see `json_field` for the values).
                // Each key is compared with what comes before it (`{` or `,`) and its colon.
                let bytes = line.as_bytes();
                let mut at = 0usize;
                let mut index = 0usize;
                let record = $name {
                    $( $field: {
                        let key = if index == 0 {
                            concat!("{\"", stringify!($field), "\":")
                        } else {
                            concat!(",\"", stringify!($field), "\":")
                        };
                        index += 1;
                        at = $crate::record::json_key(bytes, at, key)?;
                        let (value, end) = <$ty as $crate::record::CsvField>::parse_json_at(line, at)?;
                        at = end;
                        value
                    } ),*
                };
                (bytes.get(at) == Some(&b'}') && at + 1 == bytes.len()).then_some(record)
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

    #[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
    enum Kind {
        Sale,
        Refund,
        #[allow(dead_code)]
        Tagged(u8),
    }

    impl CsvField for Kind {
        fn parse_field(text: &str) -> Result<Self, String> {
            serde_json::from_str(&format!("{text:?}")).map_err(|e| e.to_string())
        }
        fn write_field(&self, out: &mut String) {
            out.push_str(serde_json::to_string(self).unwrap_or_default().trim_matches('"'))
        }
    }

    #[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
    struct Cents(i64);

    impl CsvField for Cents {
        fn parse_field(text: &str) -> Result<Self, String> {
            i64::parse_field(text).map(Cents)
        }
        fn write_field(&self, out: &mut String) {
            self.0.write_field(out)
        }
    }

    crate::__csv_record_with_serde! {
        "serde",
        /// Every kind of field a record is likely to hold.
        #[derive(Clone, Debug, PartialEq)]
        struct Mixed {
            ts_ms: u64,
            id: String,
            small: u8,
            delta: i64,
            cents: Cents,
            kind: Kind,
            note: Option<String>,
            count: Option<u32>,
            rate: f64,
            flag: bool,
        }
    }

    crate::__csv_record_with_serde! {
        "serde",
        #[derive(Clone, Debug, PartialEq)]
        struct Renamed {
            #[serde(rename = "b")]
            a: u64,
            c: u64,
        }
    }

    crate::__csv_record_with_serde! {
        "serde",
        #[derive(Clone, Debug, PartialEq)]
        struct Plain {
            b: u64,
            c: String,
        }
    }

    /// A small deterministic generator (xorshift), so that failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
            &xs[self.below(xs.len())]
        }
    }

    fn mixed(rng: &mut Rng) -> Mixed {
        let ids = [
            "t1",
            "",
            "a,b",
            "q\"uote",
            "back\\slash",
            "é€",
            "tab\there",
            "x}y",
            "{\"k\":1}",
            " pad ",
            "t1767225599154",
            "a rather longer id, é€",
        ];
        let notes = [None, Some(String::new()), Some("n".to_string()), Some("line\nbreak".to_string())];
        let big =
            [0u64, 1, 9, 10, 99, 12_345_678, 123_456_789, 1_767_225_599_154, 999_999_999_999_999_999, 9_999_999_999_999_999_999, u64::MAX];
        Mixed {
            ts_ms: big[rng.below(big.len())],
            id: rng.pick(&ids).to_string(),
            small: rng.next() as u8,
            delta: *rng.pick(&[0, -1, 1, -12_345_678, -999_999_999_999_999_999, i64::MIN, i64::MAX, 42]),
            cents: Cents(*rng.pick(&[0, -5, 123_456])),
            kind: *rng.pick(&[Kind::Sale, Kind::Refund]),
            note: rng.pick(&notes).clone(),
            count: *rng.pick(&[None, Some(0), Some(7), Some(u32::MAX)]),
            rate: *rng.pick(&[0.0, -0.0, 0.5, 1e300, -2.25, 1.0 / 3.0]),
            flag: rng.next().is_multiple_of(2),
        }
    }

    /// Changes a line the way a broken or hand-written file might (see
    /// [`crate::testing::mutate_json_line`]).
    fn mutate(rng: &mut Rng, line: &str) -> String {
        crate::testing::mutate_json_line(line, &mut |n| rng.below(n))
    }

    /// The JSON fast path answers for every line the file sink writes, with serde_json's record,
    /// and for any other line either answers with serde_json's record or leaves it to serde_json.
    #[test]
    fn plain_json_lines_decode_as_serde_json_does() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut fast, mut agreed, mut refused, mut escaped) = (0, 0, 0, 0);
        for _ in 0..3_000 {
            let record = mixed(&mut rng);
            let line = serde_json::to_string(&record).unwrap();
            // Strings with escapes are left to serde_json; any other line is read here.
            let expected = if line.contains('\\') { None } else { Some(record.clone()) };
            assert_eq!(Mixed::from_plain_json_line(&line), expected, "{line}");
            if line.contains('\\') {
                escaped += 1;
            }
            for _ in 0..20 {
                let changed = mutate(&mut rng, &line);
                let by_serde = serde_json::from_str::<Mixed>(&changed).ok();
                match Mixed::from_plain_json_line(&changed) {
                    Some(r) => {
                        assert_eq!(Some(r), by_serde, "{changed}");
                        fast += 1;
                    }
                    None if by_serde.is_some() => agreed += 1,
                    None => refused += 1,
                }
            }
        }
        // The mutations reach all three outcomes, so the checks above are not vacuous.
        assert!(fast > 500 && agreed > 2_000 && refused > 10_000 && escaped < 2_000, "{fast} {agreed} {refused} {escaped}");
    }

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

    /// Records whose serde attributes may change how a line reads take serde_json's path only.
    #[test]
    fn records_with_serde_attributes_take_no_json_fast_path() {
        assert_eq!(Renamed::from_plain_json_line(r#"{"a":1,"c":2}"#), None);
        assert_eq!(Renamed::from_plain_json_line(r#"{"b":1,"c":2}"#), None);
        assert_eq!(Plain::from_plain_json_line(r#"{"b":1,"c":"x"}"#), Some(Plain { b: 1, c: "x".into() }));
        for line in [
            r#"{"b":1,"c":"x"} "#,
            r#" {"b":1,"c":"x"}"#,
            r#"{"b":1, "c":"x"}"#,
            r#"{"b":[1],"c":"x"}"#,
            r#"{"b":1,"c":"\n"}"#,
            r#"{"b":1}"#,
            "{}",
            "{",
            "",
        ] {
            assert_eq!(Plain::from_plain_json_line(line), None, "{line}");
        }
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

    crate::__csv_record_with_serde! {
        "serde",
        /// A field of each kind the CSV single pass reads, in place or through `parse_field`.
        #[derive(Clone, Debug, PartialEq)]
        struct Columns {
            ts_ms: u64,
            delta: i64,
            id: String,
            count: Option<u64>,
            flag: bool,
            rate: f64,
            kind: Kind,
            small: u8,
            offset: Option<i16>,
            cents: Cents,
        }
    }

    /// The CSV single pass answers for the plain lines, with the general path's record, and
    /// leaves every other line to the general path: `from_csv_line` gives the general path's
    /// record or error message for every line.
    #[test]
    fn plain_csv_lines_decode_as_the_general_path_does() {
        const NUMBERS: &[&str] = &[
            "",
            "0",
            "-0",
            "00",
            "007",
            "7",
            "-7",
            "+5",
            " 5",
            "5 ",
            "-",
            "--1",
            "5-",
            "1.5",
            "1e3",
            "99",
            "100",
            "255",
            "256",
            "-128",
            "-129",
            "32767",
            "-32768",
            "-32769",
            "12345678",
            "123456789",
            "1767225599154",
            "999999999999999999",
            "-999999999999999999",
            "9999999999999999999",
            "-9999999999999999999",
            "9223372036854775807",
            "-9223372036854775808",
            "9223372036854775808",
            "18446744073709551615",
            "18446744073709551616",
            "00000000000000000000001",
            "٣",
            "\"7\"",
            "7\"",
            "é",
        ];
        const TEXTS: &[&str] = &[
            "", "a", "t123456", " pad ", "a b", "é€", "¢", "x\"y", "\"q\"", "\"a,b\"", "\"\"", "SALE", "REFUND", "Sale", "true", "false",
            "True", "NaN", "inf", "-0.0", "1e300", "0.5", "x",
        ];
        /// Mostly a value the column's type reads (in place or not), sometimes anything.
        fn column(rng: &mut Rng, index: usize) -> String {
            let good: &[&str] = match index {
                0 => &[
                    "0",
                    "7",
                    "00",
                    "12345678",
                    "123456789",
                    "1767225599154",
                    "1234567812345678",
                    "9999999999999999999",
                    "18446744073709551615",
                ],
                1 => &["0", "-0", "7", "-7", "+7", "-1767225599154", "999999999999999999", "-999999999999999999", "-9223372036854775808"],
                2 => {
                    // Ids of every length, so that the fields after it start at every offset.
                    let alphabet = ["a", "Z", "0", "-", " ", "é", "€", "¢", "_"];
                    return (0..rng.below(20)).map(|_| *rng.pick(&alphabet)).collect();
                }
                3 => &["", "0", "42", "18446744073709551615"],
                4 => &["true", "false", " true"],
                5 => &["0", "1.5", "-2.25", "1e300", "NaN", " 1"],
                6 => &["SALE", "REFUND"],
                7 => &["0", "7", "99", "255", "+1"],
                8 => &["", "-0", "-5", "123", "32767", "-32768"],
                _ => &["0", "-5", "123456", "-9223372036854775808"],
            };
            let pool = match rng.below(40) {
                0 => NUMBERS,
                1 => TEXTS,
                _ => good,
            };
            let text = rng.pick(pool).to_string();
            if rng.below(40) == 0 {
                format!("\"{text}\"")
            } else {
                text
            }
        }
        let pieces = [",", "\"", " ", "-", "+", "0", "9", ".", "é", "€", "\r", "\t", ",,", "\"\""];
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let (mut plain, mut general_only, mut errors) = (0, 0, 0);
        let mut seen = std::collections::BTreeSet::new();
        for round in 0..40_000 {
            // Mostly the right number of columns, sometimes more or fewer.
            let columns = match rng.below(10) {
                0 => rng.below(10),
                1 => 11 + rng.below(2),
                _ => 10,
            };
            let fields: Vec<String> = (0..columns).map(|i| column(&mut rng, i)).collect();
            let mut line = fields.join(",");
            if round % 3 == 0 {
                let mut chars: Vec<char> = line.chars().collect();
                for _ in 0..1 + rng.below(2) {
                    let at = rng.below(chars.len() + 1);
                    let piece: Vec<char> = rng.pick(&pieces).chars().collect();
                    match rng.below(3) {
                        0 if at < chars.len() => {
                            chars.remove(at);
                        }
                        1 if at < chars.len() => {
                            chars.splice(at..at + 1, piece);
                        }
                        _ => {
                            chars.splice(at..at, piece);
                        }
                    }
                }
                line = chars.into_iter().collect();
            }
            if !seen.insert(line.clone()) {
                continue;
            }
            // Debug text: a NaN field is equal to itself there.
            let general = format!("{:?}", from_csv_line_general::<Columns>(&line));
            assert_eq!(format!("{:?}", Columns::from_csv_line(&line)), general, "{line:?}");
            match Columns::from_plain_csv_line(&line) {
                Some(record) => {
                    assert_eq!(format!("{:?}", Ok::<_, String>(record)), general, "{line:?}");
                    assert!(!line.contains('"'), "{line:?}");
                    plain += 1;
                }
                None if general.starts_with("Ok") => general_only += 1,
                None => errors += 1,
            }
            let mixed = format!("{:?}", from_csv_line_general::<Mixed>(&line));
            assert_eq!(format!("{:?}", Mixed::from_csv_line(&line)), mixed, "{line:?}");
        }
        // Every outcome is reached many times, so the checks above are not vacuous.
        assert!(plain > 2_000 && general_only > 5_000 && errors > 10_000, "{plain} {general_only} {errors}");
        // The lines the file sink writes are read in the single pass.
        for _ in 0..1_000 {
            let record = mixed(&mut rng);
            let mut line = String::new();
            record.write_csv(&mut line);
            let plain = Mixed::from_plain_csv_line(&line);
            // Integers are read in place up to one digit fewer than their type's maximum has.
            let in_place = record.ts_ms < 10u64.pow(19)
                && record.small < 100
                && record.delta.unsigned_abs() < 10u64.pow(18)
                && record.count.is_none_or(|count| count < 10u32.pow(9));
            assert_eq!(plain.is_some(), !line.contains('"') && in_place, "{line:?}");
            if let Some(plain) = plain {
                assert_eq!(Ok(plain), from_csv_line_general::<Mixed>(&line), "{line:?}");
            }
        }
    }

    /// Runs of digits read in place, eight at a time where the slice has eight bytes, give what
    /// `parse_plain_digits` gives for the run, at every offset, length and ending.
    #[test]
    fn digit_runs_read_as_parse_plain_digits_reads_them() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let mut read = 0;
        for length in 0..=24 {
            for offset in 0..10 {
                for ending in ["", ",", "x", "/", ":", "é", "}", ",123456789"] {
                    let digits: String = (0..length).map(|i| char::from(b'0' + [0, 9, rng.below(10) as u8][i % 3])).collect();
                    let line = format!("{}{digits}{ending}", "a".repeat(offset));
                    for max_digits in [1, 2, 4, 8, 9, 16, 18, 19] {
                        let expected = parse_plain_digits(digits.as_bytes(), max_digits).map(|value| (value, offset + length));
                        assert_eq!(scan_digits(line.as_bytes(), offset, max_digits), expected, "{line:?} from {offset}, {max_digits}");
                        read += usize::from(expected.is_some());
                    }
                }
            }
        }
        assert!(read > 1_000, "{read}");
    }

    /// The word-at-a-time byte classes mark exactly the bytes they name, each byte on its own
    /// (no carry from one byte into the next), whatever the other bytes are.
    #[test]
    fn byte_classes_mark_each_byte_on_its_own() {
        fn expected(word: u64, class: impl Fn(u8) -> bool) -> u64 {
            word.to_le_bytes().iter().enumerate().filter(|(_, &b)| class(b)).map(|(i, _)| 0x80u64 << (8 * i)).sum()
        }
        let string_stop = |b: u8| b < 0x20 || b == b'"' || b == b'\\';
        let field_stop = |b: u8| b == b',' || b == b'"';
        let non_digit = |b: u8| !b.is_ascii_digit();
        let mut rng = Rng(0x0bad_5eed_1234_5678);
        let mut words: Vec<u64> = (0..20_000).map(|_| rng.next()).collect();
        for b in 0..=255u8 {
            for fill in [0u8, b'a', b'0', b'"', 0xff, 0x1f, 0x21, 0x23] {
                for at in 0..8 {
                    let mut bytes = [fill; 8];
                    bytes[at] = b;
                    words.push(u64::from_le_bytes(bytes));
                }
            }
        }
        for word in words {
            assert_eq!(StringStops::marks(word), expected(word, string_stop), "{word:#x}");
            assert_eq!(FieldStops::marks(word), expected(word, field_stop), "{word:#x}");
            assert_eq!(non_digits(word), expected(word, non_digit), "{word:#x}");
        }
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
