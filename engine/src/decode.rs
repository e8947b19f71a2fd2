//! Decoding a file's lines into records: the `file:` source's reading loop, apart from the file.
//!
//! [`LineDecoder`] reads CSV or JSON lines from any buffered reader, counts lines and bytes (for
//! checkpoint positions and dead-letter line numbers) and turns each line into a record or a
//! [`DeadLetter`] with the reason. The file source wraps it around a file; the decode benchmark
//! runs the very same code over lines held in memory.

use std::io::BufRead;

use crate::record::{CsvRecord, DeadLetter};
use crate::source::{parse_csv_line, ReadStatus};
use crate::uri::Format;

/// Reads lines of one format and decodes them into records of type `T`.
pub struct LineDecoder {
    source: String,
    origin: String,
    format: Format,
    /// Lines read so far (1-based number of the last line read).
    line_no: u64,
    /// Bytes consumed so far.
    offset: u64,
    buf: Vec<u8>,
}

impl LineDecoder {
    /// A decoder for the source named `source`, reading from `origin` (a file name, for dead letters).
    pub fn new(source: &str, origin: String, format: Format) -> Self {
        LineDecoder { source: source.to_string(), origin, format, line_no: 0, offset: 0, buf: Vec::with_capacity(256) }
    }

    /// Lines read so far.
    pub fn line_no(&self) -> u64 {
        self.line_no
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Continues counting from a checkpointed position (the reader must be moved there too).
    pub fn resume_at(&mut self, offset: u64, line_no: u64) {
        self.offset = offset;
        self.line_no = line_no;
        self.buf.clear();
    }

    fn dead(&self, reason: String, raw: &str) -> DeadLetter {
        DeadLetter { source: self.source.clone(), origin: self.origin.clone(), line: self.line_no, reason, raw: raw.to_string() }
    }

    /// Reads up to `max` records (dead letters count toward `max`) from `reader` into `out`,
    /// and unreadable lines into `dead`. Returns [`ReadStatus::Done`] at the end of the input.
    pub fn read<T, R>(&mut self, reader: &mut R, max: usize, out: &mut Vec<T>, dead: &mut Vec<DeadLetter>) -> ReadStatus
    where
        T: CsvRecord + serde::de::DeserializeOwned,
        R: BufRead,
    {
        let mut produced = 0;
        let dead_before = dead.len();
        // Dead letters count toward the batch, so a file of bad lines is still read in slices.
        while produced + (dead.len() - dead_before) < max {
            self.buf.clear();
            match reader.read_until(b'\n', &mut self.buf) {
                Ok(0) => return ReadStatus::Done,
                Ok(n) => self.offset += n as u64,
                Err(e) => {
                    self.line_no += 1;
                    dead.push(self.dead(format!("read error: {e}; the rest of the file is skipped"), ""));
                    return ReadStatus::Done;
                }
            }
            self.line_no += 1;
            while matches!(self.buf.last(), Some(b'\n' | b'\r')) {
                self.buf.pop();
            }
            let line = match std::str::from_utf8(&self.buf) {
                Ok(l) => l,
                Err(e) => {
                    let raw = String::from_utf8_lossy(&self.buf).into_owned();
                    dead.push(self.dead(format!("not UTF-8: {e}"), &raw));
                    continue;
                }
            };
            if line.trim().is_empty() {
                continue;
            }
            let parsed = match self.format {
                Format::Csv => {
                    if self.line_no == 1 && line.trim().eq_ignore_ascii_case(&T::csv_header()) {
                        continue;
                    }
                    parse_csv_line::<T>(line)
                }
                Format::JsonLines => serde_json::from_str::<T>(line).map_err(|e| format!("invalid JSON record: {e}")),
            };
            match parsed {
                Ok(record) => {
                    out.push(record);
                    produced += 1;
                }
                Err(reason) => {
                    let reason = if self.line_no == 1 && self.format == Format::Csv {
                        format!("{reason} (a header line must read {:?})", T::csv_header())
                    } else {
                        reason
                    };
                    let d = self.dead(reason, line);
                    dead.push(d);
                }
            }
        }
        ReadStatus::More
    }
}
