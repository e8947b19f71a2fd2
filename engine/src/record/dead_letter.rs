//! [`DeadLetter`]: a record a source could not read, sent to the job's dead-letter output.

use serde::{Deserialize, Serialize};

use super::{parse_column, push_csv_field, CsvRecord};

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
    use crate::record::fixtures::split;

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
