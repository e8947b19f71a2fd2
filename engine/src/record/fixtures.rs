//! Test fixtures shared by the record modules' tests: field types with a hand-written
//! [`CsvField`], a small deterministic generator and a CSV splitting helper.

use serde::{Deserialize, Serialize};

use super::{split_csv_line, CsvField};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(super) enum Kind {
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
pub(super) struct Cents(pub(super) i64);

impl CsvField for Cents {
    fn parse_field(text: &str) -> Result<Self, String> {
        i64::parse_field(text).map(Cents)
    }
    fn write_field(&self, out: &mut String) {
        self.0.write_field(out)
    }
}

/// A small deterministic generator (xorshift), so that failures reproduce.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub(super) fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

pub(super) fn split(line: &str) -> Result<Vec<String>, String> {
    let mut v = Vec::new();
    split_csv_line(line, &mut v)?;
    Ok(v.into_iter().map(|c| c.into_owned()).collect())
}
