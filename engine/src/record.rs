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
            fn parse_field(text: &str) -> Result<Self, String> {
                text.trim().parse::<$t>().map_err(|e| format!("invalid {}: {e}", stringify!($t)))
            }
            fn write_field(&self, out: &mut String) {
                WriteDecimal::write_decimal(self, out)
            }
        }
    )*};
}
int_field!(u8, u16, u32, u64, i8, i16, i32, i64, usize, bool);

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

/// Parses column `index` (named `name`) of a record, naming the column in the error.
pub fn parse_column<F: CsvField>(fields: &[&str], index: usize, name: &str) -> Result<F, String> {
    F::parse_field(fields[index]).map_err(|e| format!("column {} ({name}): {e} in {:?}", index + 1, fields[index]))
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
                let columns = Self::csv_columns();
                if fields.len() != columns.len() {
                    return Err(format!("expected {} columns ({}), found {}", columns.len(), columns.join(","), fields.len()));
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
