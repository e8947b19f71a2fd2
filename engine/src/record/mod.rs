//! How records are read from and written to text: CSV and JSON lines.
//!
//! A record type implements [`CsvRecord`] (usually through [`csv_record!`](crate::csv_record))
//! and serde's traits; the file connectors pick the format from the file extension. CSV is
//! comma-separated with an optional header line; fields that hold a comma, quote or line break
//! are quoted with `"` and inner quotes doubled (RFC 4180). Parsing never panics: a bad line
//! yields a reason, and the source sends it to the dead-letter output.
//!
//! * [`CsvRecord`] (here) and [`CsvField`] (`fields`): what a record and each of its fields
//!   implement.
//! * `split`: splitting a CSV line into fields and quoting fields as they are written.
//! * `json`: the JSON lines fast path, which reads the lines the file sink writes without
//!   serde_json and leaves every other line to it.
//! * `scan`: the word-at-a-time byte scanning both fast paths are built on.
//! * `macros`: [`csv_record!`](crate::csv_record), which writes both fast paths for a struct.
//! * [`Rfc3339Millis`] (`rfc3339`): a field holding an event time written as RFC 3339 text.
//! * [`DeadLetter`] (`dead_letter`): a record that could not be read.

mod dead_letter;
mod fields;
#[cfg(test)]
mod fixtures;
mod json;
mod macros;
mod rfc3339;
mod scan;
mod split;

pub use dead_letter::DeadLetter;
pub use fields::{parse_column, CsvField};
pub use json::{json_field, json_key, json_value, plain_json_string, PlainJsonValue};
pub use rfc3339::Rfc3339Millis;
pub use split::{from_csv_line_general, plain_field, push_csv_field, split_csv_line};

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

    /// The field at fault in a JSON line that serde_json refused, when one field's value is
    /// what it could not read (a string where a number belongs, a malformed time), so that a
    /// dead letter can name it; `None` otherwise (a missing field, a line that is not an
    /// object) and by default. [`csv_record!`](crate::csv_record) records without serde
    /// attributes answer it, reading each field's value again on its own: only bad lines pay.
    fn json_field_at_fault(_line: &str) -> Option<&'static str> {
        None
    }

    /// The header line, without the line break.
    fn csv_header() -> String {
        Self::csv_columns().join(",")
    }
}
