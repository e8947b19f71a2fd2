//! Splitting a CSV line into its fields (unquoting quoted ones) and writing fields into a line
//! (quoting where needed): the general path every CSV line can take.

use super::scan::{plain_field_end, slice};
use super::{CsvField, CsvRecord};

/// The text of the unquoted CSV field that starts at byte `at` of a line, up to the next `,` or
/// the line's end, or `None` if it holds a `"`: for [`CsvField::parse_at`] implementations that
/// read the text themselves.
#[inline(always)]
pub fn plain_field(line: &str, at: usize) -> Option<&str> {
    slice(line, at, plain_field_end(line.as_bytes(), at)?)
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

/// [`CsvRecord::from_csv_line`]'s general path: any line, quoted or not, split into a vector.
/// For records that override `from_csv_line` with a fast path and fall back to this one.
pub fn from_csv_line_general<T: CsvRecord>(line: &str) -> Result<T, String> {
    let mut fields = Vec::with_capacity(16);
    split_csv_line(line, &mut fields)?;
    let refs: Vec<&str> = fields.iter().map(|f| f.as_ref()).collect();
    T::from_csv_fields(&refs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::fixtures::split;

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
}
