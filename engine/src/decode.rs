//! Decoding a file's lines into records: the `file:` source's reading loop, apart from the file.
//!
//! [`LineDecoder`] reads CSV or JSON lines from any buffered reader, counts lines and bytes (for
//! checkpoint positions and dead-letter line numbers) and turns each line into a record or a
//! [`DeadLetter`] with the reason. The file source wraps it around a file; the decode benchmark
//! runs the very same code over lines held in memory.

use std::io::BufRead;

use crate::format::Format;
use crate::record::{CsvRecord, DeadLetter};
use crate::split::ReadStatus;

/// Where a reader puts the records it reads: a `Vec<T>`, or a source's batch of
/// `(event time, record)` pairs ([`Stamped`]), so that a record is written once, where it stays.
pub trait Records<T> {
    /// Appends one record.
    fn push_record(&mut self, record: T);
}

impl<T> Records<T> for Vec<T> {
    #[inline]
    fn push_record(&mut self, record: T) {
        self.push(record)
    }
}

/// A source's batch: records appended with 0 as their event time, which the source fills in.
pub struct Stamped<'a, T>(pub &'a mut Vec<(u64, T)>);

impl<T> Records<T> for Stamped<'_, T> {
    #[inline]
    fn push_record(&mut self, record: T) {
        self.0.push((0, record))
    }
}

/// Finds line breaks: memchr's AVX2 searcher when the CPU has one, chosen once per decoder instead
/// of through `memchr::memchr`'s dispatch on every call, which costs on every line (figures in
/// BENCHMARKS.md, "Decoding").
#[derive(Clone, Copy, Debug)]
struct NewlineFinder {
    #[cfg(target_arch = "x86_64")]
    avx2: Option<memchr::arch::x86_64::avx2::memchr::One>,
}

impl NewlineFinder {
    fn new() -> Self {
        NewlineFinder {
            #[cfg(target_arch = "x86_64")]
            avx2: memchr::arch::x86_64::avx2::memchr::One::new(b'\n'),
        }
    }

    #[inline]
    fn find(&self, haystack: &[u8]) -> Option<usize> {
        #[cfg(target_arch = "x86_64")]
        if let Some(one) = &self.avx2 {
            return one.find(haystack);
        }
        memchr::memchr(b'\n', haystack)
    }
}

/// Reads lines of one format and decodes them into records of type `T`.
pub struct LineDecoder {
    newline: NewlineFinder,
    source: String,
    origin: String,
    format: Format,
    /// Lines read so far (1-based number of the last line read).
    line_no: u64,
    /// Bytes consumed so far.
    offset: u64,
    buf: Vec<u8>,
    /// The longest line or message decoded; a longer one goes to dead letters.
    max_record_bytes: usize,
    /// The length so far of an overlong line being skipped (`buf` keeps its first bytes).
    oversize: Option<u64>,
}

/// The default of [`LineDecoder::with_max_record_bytes`]: 1 MiB.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1 << 20;

/// How many of an overlong record's first bytes its dead letter shows.
const OVERSIZE_PREVIEW: usize = 256;

impl LineDecoder {
    /// A decoder for the source named `source`, reading from `origin` (a file name, for dead letters).
    pub fn new(source: &str, origin: String, format: Format) -> Self {
        LineDecoder {
            newline: NewlineFinder::new(),
            source: source.to_string(),
            origin,
            format,
            line_no: 0,
            offset: 0,
            buf: Vec::with_capacity(256),
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            oversize: None,
        }
    }

    /// Caps a line or message at `max` bytes (the line break excluded): a longer one is not
    /// gathered in memory but skipped, and goes to dead letters with its length and first bytes.
    pub fn with_max_record_bytes(mut self, max: usize) -> Self {
        self.max_record_bytes = max.max(1);
        self
    }

    /// Dead-letters the overlong line whose first bytes `buf` holds, followed by `more`: `length`
    /// bytes in all, `consumed` bytes of input with its line break.
    fn drop_oversize(&mut self, length: u64, more: &[u8], consumed: u64, dead: &mut Vec<DeadLetter>) {
        let mut preview = std::mem::take(&mut self.buf);
        let room = OVERSIZE_PREVIEW.saturating_sub(preview.len());
        preview.extend_from_slice(&more[..room.min(more.len())]);
        let letter = self.oversize_letter(length, &preview);
        dead.push(letter);
        self.offset += consumed;
        self.oversize = None;
        self.buf = preview;
        self.buf.clear();
    }

    /// A dead letter for an overlong record of `length` bytes whose first bytes are `preview`.
    fn oversize_letter(&mut self, length: u64, preview: &[u8]) -> DeadLetter {
        self.line_no += 1;
        let shown = &preview[..preview.len().min(OVERSIZE_PREVIEW)];
        self.dead(
            format!(
                "record of {length} bytes is longer than max_record_bytes ({}); its first {} bytes are shown",
                self.max_record_bytes,
                shown.len()
            ),
            &String::from_utf8_lossy(shown),
        )
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
        self.oversize = None;
    }

    fn dead(&self, reason: String, raw: &str) -> DeadLetter {
        DeadLetter { source: self.source.clone(), origin: self.origin.clone(), line: self.line_no, reason, raw: raw.to_string() }
    }

    /// Reads up to `max` records (dead letters count toward `max`) from `reader` into `out`,
    /// and unreadable lines into `dead`. Returns [`ReadStatus::Done`] at the end of the input.
    ///
    /// A line held whole in the reader's buffer is decoded where it lies; only a line that
    /// straddles two fills of the buffer (or ends the input without a line break) is copied.
    pub fn read<T, R, O>(&mut self, reader: &mut R, max: usize, out: &mut O, dead: &mut Vec<DeadLetter>) -> ReadStatus
    where
        T: CsvRecord + serde::de::DeserializeOwned,
        R: BufRead,
        O: Records<T>,
    {
        let mut produced = 0;
        let dead_before = dead.len();
        // Dead letters count toward the batch, so a file of bad lines is still read in slices.
        while produced + (dead.len() - dead_before) < max {
            let available = match reader.fill_buf() {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.buf.clear();
                    self.line_no += 1;
                    dead.push(self.dead(format!("read error: {e}; the rest of the file is skipped"), ""));
                    return ReadStatus::Done;
                }
            };
            let consumed = match self.newline.find(available) {
                // The end of an overlong line being skipped.
                Some(end) if self.oversize.is_some() => {
                    let length = self.oversize.unwrap_or(0) + end as u64;
                    self.drop_oversize(length, &[], length + 1, dead);
                    end + 1
                }
                Some(end) if self.buf.len() + end > self.max_record_bytes => {
                    let length = (self.buf.len() + end) as u64;
                    self.drop_oversize(length, &available[..end], length + 1, dead);
                    end + 1
                }
                Some(end) if self.buf.is_empty() => {
                    produced += self.decode_line(&available[..end], end + 1, out, dead);
                    end + 1
                }
                Some(end) => {
                    self.buf.extend_from_slice(&available[..=end]);
                    let line = std::mem::take(&mut self.buf);
                    produced += self.decode_line(&line[..line.len() - 1], line.len(), out, dead);
                    self.buf = line;
                    self.buf.clear();
                    end + 1
                }
                None if available.is_empty() => {
                    if let Some(length) = self.oversize {
                        // The input ended inside an overlong line.
                        self.drop_oversize(length, &[], length, dead);
                        continue;
                    }
                    if self.buf.is_empty() {
                        return ReadStatus::Done;
                    }
                    // The last line, without a line break.
                    let line = std::mem::take(&mut self.buf);
                    produced += self.decode_line(&line, line.len(), out, dead);
                    self.buf = line;
                    self.buf.clear();
                    continue;
                }
                None => {
                    // Part of a line: gather it until its end arrives. Not yet counted in `offset`.
                    // Past `max_record_bytes`, only its length is kept (and its first bytes).
                    let n = available.len();
                    match self.oversize.as_mut() {
                        Some(length) => *length += n as u64,
                        None if self.buf.len() + n > self.max_record_bytes => {
                            self.oversize = Some((self.buf.len() + n) as u64);
                            let room = OVERSIZE_PREVIEW.saturating_sub(self.buf.len());
                            self.buf.extend_from_slice(&available[..room.min(n)]);
                            self.buf.truncate(OVERSIZE_PREVIEW);
                        }
                        None => self.buf.extend_from_slice(available),
                    }
                    reader.consume(n);
                    continue;
                }
            };
            reader.consume(consumed);
        }
        ReadStatus::More
    }

    /// Decodes one message (a broker message: a CSV line or a JSON object, without a line
    /// break) into `out` or `dead`; `number` (its offset in its split) is the line number dead
    /// letters give. Returns 1 if it yielded a record.
    pub fn decode_message<T, O>(&mut self, payload: &[u8], number: u64, out: &mut O, dead: &mut Vec<DeadLetter>) -> usize
    where
        T: CsvRecord + serde::de::DeserializeOwned,
        O: Records<T>,
    {
        // Numbered as given; a CSV header is recognised only as the first message (number 1).
        self.line_no = number.saturating_sub(1);
        let dead_before = dead.len();
        let produced = if payload.len() > self.max_record_bytes {
            let letter = self.oversize_letter(payload.len() as u64, payload);
            dead.push(letter);
            self.offset += payload.len() as u64;
            0
        } else {
            self.decode_line(payload, payload.len(), out, dead)
        };
        // Exactly the number given, 0 included (a stream's first offset).
        for letter in &mut dead[dead_before..] {
            letter.line = number;
        }
        produced
    }

    /// Decodes one line (its bytes, the line break excluded; `consumed` bytes of input with it)
    /// into `out` or `dead`, counting it. Returns 1 if it yielded a record.
    #[inline]
    fn decode_line<T, O>(&mut self, bytes: &[u8], consumed: usize, out: &mut O, dead: &mut Vec<DeadLetter>) -> usize
    where
        T: CsvRecord + serde::de::DeserializeOwned,
        O: Records<T>,
    {
        self.offset += consumed as u64;
        self.line_no += 1;
        let mut bytes = bytes;
        while let [rest @ .., b'\n' | b'\r'] = bytes {
            bytes = rest;
        }
        let line = match text(bytes) {
            Ok(l) => l,
            Err(e) => {
                let raw = String::from_utf8_lossy(bytes).into_owned();
                dead.push(self.dead(format!("not UTF-8: {e}"), &raw));
                return 0;
            }
        };
        if is_blank(line) {
            return 0;
        }
        let parsed = match self.format {
            Format::Csv => {
                if self.line_no == 1 && line.trim().eq_ignore_ascii_case(&T::csv_header()) {
                    return 0;
                }
                // Pushed where it is built, as for JSON below; any other line is read again by
                // `from_csv_line` (which tries the plain path first too), and that gives the record
                // or the error.
                if let Some(record) = T::from_plain_csv_line(line) {
                    out.push_record(record);
                    return 1;
                }
                T::from_csv_line(line)
            }
            Format::JsonLines => {
                // Pushed where it is built: one copy of the record fewer.
                if let Some(record) = T::from_plain_json_line(line) {
                    out.push_record(record);
                    return 1;
                }
                serde_json::from_str::<T>(line).map_err(|e| match T::json_field_at_fault(line) {
                    Some(field) => format!("invalid JSON record: field {field}: {e}"),
                    None => format!("invalid JSON record: {e}"),
                })
            }
        };
        match parsed {
            Ok(record) => {
                out.push_record(record);
                1
            }
            Err(reason) => {
                let reason = if self.line_no == 1 && self.format == Format::Csv {
                    format!("{reason} (a header line must read {:?})", T::csv_header())
                } else {
                    reason
                };
                let d = self.dead(reason, line);
                dead.push(d);
                0
            }
        }
    }
}

/// The line as text, as `std::str::from_utf8` gives it, checking an all-ASCII line (the usual
/// one) with a cheaper test than full UTF-8 validation.
#[inline]
fn text(bytes: &[u8]) -> Result<&str, std::str::Utf8Error> {
    if is_ascii(bytes) {
        // SAFETY: ASCII bytes are valid UTF-8; `is_ascii` has just checked every byte.
        Ok(unsafe { std::str::from_utf8_unchecked(bytes) })
    } else {
        std::str::from_utf8(bytes)
    }
}

/// Whether every byte is ASCII: the bytes or-ed together sixteen at a time (unaligned, without
/// an early exit, which costs more than it saves on a line of a few words), then the high bits.
#[inline]
fn is_ascii(bytes: &[u8]) -> bool {
    let word = |eight: &[u8]| u64::from_le_bytes(eight.try_into().unwrap_or([0xff; 8]));
    let Some(last) = bytes.len().checked_sub(8) else {
        return bytes.is_ascii();
    };
    // The last eight bytes, and the first eight of what the pairs leave, cover what they leave.
    let mut pairs = bytes.chunks_exact(16);
    let mut any = word(&bytes[last..]);
    for pair in &mut pairs {
        any |= word(&pair[..8]) | word(&pair[8..]);
    }
    if let Some(eight) = pairs.remainder().get(..8) {
        any |= word(eight);
    }
    any & 0x8080_8080_8080_8080 == 0
}

/// Whether a line is empty or only white space (`str::trim`'s white space), checking no more than
/// the first character of an ordinary line.
#[inline]
fn is_blank(line: &str) -> bool {
    match line.as_bytes().first() {
        None => true,
        // Every ASCII character that `trim` removes is at most a space.
        Some(&b) if b > b' ' && b.is_ascii() => false,
        Some(_) => line.trim().is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::__csv_record_with_serde! {
        "serde",
        #[derive(Clone, Debug, PartialEq)]
        struct Row {
            id: u64,
            name: String,
        }
    }

    const INPUT: &[u8] = b"id,name\n1,a\r\n\n  \n2,\"b,c\"\n\xff\n3,x,y\n4,d";

    /// Reads everything in slices of `max`, with a reader buffer of `capacity` bytes; returns the
    /// records, the dead letters and the position after each read.
    fn read_all(input: &[u8], capacity: usize, max: usize, format: Format) -> (Vec<Row>, Vec<DeadLetter>, Vec<(u64, u64)>) {
        let mut reader = std::io::BufReader::with_capacity(capacity, input);
        let mut decoder = LineDecoder::new("rows", "in.csv".into(), format);
        let (mut rows, mut dead, mut positions) = (Vec::new(), Vec::new(), Vec::new());
        loop {
            let status = decoder.read(&mut reader, max, &mut rows, &mut dead);
            positions.push((decoder.offset(), decoder.line_no()));
            if status == ReadStatus::Done {
                return (rows, dead, positions);
            }
        }
    }

    #[test]
    fn lines_split_across_buffer_fills_decode_the_same() {
        let (rows, dead, positions) = read_all(INPUT, 1 << 16, 2, Format::Csv);
        assert_eq!(rows, vec![Row { id: 1, name: "a".into() }, Row { id: 2, name: "b,c".into() }, Row { id: 4, name: "d".into() }]);
        let reasons: Vec<(u64, &str)> = dead.iter().map(|d| (d.line, d.reason.as_str())).collect();
        assert_eq!(reasons[0].0, 6);
        assert!(reasons[0].1.starts_with("not UTF-8"), "{reasons:?}");
        assert_eq!(reasons[1], (7, "expected 2 columns (id,name), found 3"));
        assert_eq!(dead[1].raw, "3,x,y");
        assert_eq!(positions.last(), Some(&(INPUT.len() as u64, 8)));
        for capacity in 1..12 {
            assert_eq!(read_all(INPUT, capacity, 2, Format::Csv), (rows.clone(), dead.clone(), positions.clone()), "capacity {capacity}");
        }
    }

    /// Lines over `max_record_bytes` go to dead letters with their length, whether they lie in
    /// one buffer fill or straddle several, end the input or not; nothing else changes, and the
    /// positions count every byte.
    #[test]
    fn overlong_lines_are_dead_letters_whatever_the_buffer() {
        let long = "9,".to_string() + &"x".repeat(40);
        let input = format!("id,name\n1,a\n{long}\n2,b\n{long}");
        let read = |capacity: usize| {
            let mut reader = std::io::BufReader::with_capacity(capacity, input.as_bytes());
            let mut decoder = LineDecoder::new("rows", "in.csv".into(), Format::Csv).with_max_record_bytes(20);
            let (mut rows, mut dead) = (Vec::<Row>::new(), Vec::new());
            while decoder.read(&mut reader, 3, &mut rows, &mut dead) != ReadStatus::Done {}
            (rows, dead, decoder.offset(), decoder.line_no())
        };
        let (rows, dead, offset, lines) = read(1 << 16);
        assert_eq!(rows, vec![Row { id: 1, name: "a".into() }, Row { id: 2, name: "b".into() }]);
        let reasons: Vec<(u64, &str)> = dead.iter().map(|d| (d.line, d.reason.as_str())).collect();
        let why = "record of 42 bytes is longer than max_record_bytes (20); its first 42 bytes are shown";
        assert_eq!(reasons, vec![(3, why), (5, why)]);
        assert_eq!(dead[0].raw, long);
        assert_eq!((offset, lines), (input.len() as u64, 5));
        for capacity in 1..50 {
            let (r, d, o, l) = read(capacity);
            assert_eq!((r, o, l), (rows.clone(), offset, lines), "capacity {capacity}");
            let got: Vec<(u64, &str)> = d.iter().map(|d| (d.line, d.reason.as_str())).collect();
            assert_eq!(got.len(), 2, "capacity {capacity}: {got:?}");
            assert!(got.iter().all(|(_, r)| r.starts_with("record of 42 bytes")), "capacity {capacity}: {got:?}");
            assert!(d.iter().all(|d| long.starts_with(&d.raw)), "capacity {capacity}: the first bytes");
        }
        // A message over the cap too.
        let mut decoder = LineDecoder::new("rows", "topic/0".into(), Format::Csv).with_max_record_bytes(20);
        let (mut rows, mut dead) = (Vec::<Row>::new(), Vec::new());
        decoder.decode_message(long.as_bytes(), 7, &mut rows, &mut dead);
        assert!(rows.is_empty() && dead[0].line == 7 && dead[0].reason.starts_with("record of 42 bytes"), "{dead:?}");
        // A stream's first message is offset 0, and its dead letter says so.
        decoder.decode_message(b"x,y", 0, &mut rows, &mut dead);
        assert!(rows.is_empty() && dead[1].line == 0, "{dead:?}");
    }

    #[test]
    fn resuming_at_a_position_reads_the_rest() {
        let (rows, dead, _) = read_all(INPUT, 1 << 16, 2, Format::Csv);
        let mut reader = INPUT;
        let mut decoder = LineDecoder::new("rows", "in.csv".into(), Format::Csv);
        let (mut first, mut first_dead) = (Vec::new(), Vec::new());
        decoder.read(&mut reader, 1, &mut first, &mut first_dead);
        let (offset, line) = (decoder.offset(), decoder.line_no());
        assert_eq!((offset, line), (13, 2), "the header and the first record, CR LF included");
        let mut resumed = LineDecoder::new("rows", "in.csv".into(), Format::Csv);
        resumed.resume_at(offset, line);
        let mut rest_reader = &INPUT[offset as usize..];
        let (mut rest, mut rest_dead) = (Vec::new(), Vec::new());
        while resumed.read(&mut rest_reader, 100, &mut rest, &mut rest_dead) != ReadStatus::Done {}
        first.extend(rest);
        first_dead.extend(rest_dead);
        assert_eq!((first, first_dead), (rows, dead));
    }

    #[test]
    fn json_lines_decode_and_refuse_with_reasons() {
        let input = b"{\"id\":1,\"name\":\"a\"}\n\n{\"id\":\"x\",\"name\":\"b\"}\n{\"name\":\"c\",\"id\":3}";
        let (rows, dead, positions) = read_all(input, 7, 10, Format::JsonLines);
        assert_eq!(rows, vec![Row { id: 1, name: "a".into() }, Row { id: 3, name: "c".into() }]);
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].line, 3);
        assert!(dead[0].reason.starts_with("invalid JSON record: field id: invalid type"), "{}", dead[0].reason);
        assert_eq!(positions.last(), Some(&(input.len() as u64, 4)));
    }

    /// The ASCII test agrees with `u8::is_ascii` on every byte, whatever the length and the
    /// position of a non-ASCII byte; lines read as text as `std::str::from_utf8` reads them.
    #[test]
    fn lines_are_text_as_from_utf8_says() {
        for length in 0..64 {
            let ascii: Vec<u8> = (0..length).map(|i| b' ' + (i * 7 % 95) as u8).collect();
            assert!(is_ascii(&ascii), "{length}");
            assert_eq!(text(&ascii), std::str::from_utf8(&ascii));
            for at in 0..length {
                for byte in [0x80, 0xc3, 0xff] {
                    let mut bytes = ascii.clone();
                    bytes[at] = byte;
                    assert!(!is_ascii(&bytes), "{length} {at} {byte}");
                    assert_eq!(text(&bytes), std::str::from_utf8(&bytes));
                }
                let mut bytes = ascii.clone();
                bytes.splice(at..at + 1, "é".bytes());
                assert_eq!(text(&bytes), std::str::from_utf8(&bytes));
                assert!(text(&bytes).is_ok());
            }
        }
    }

    /// Plain lines take the fast path, others serde_json's: records and dead letters are those of
    /// serde_json alone.
    #[test]
    fn json_lines_decode_as_with_serde_json_alone() {
        let lines = [
            r#"{"id":1,"name":"a"}"#,
            r#"{"id":2,"name":"b\"c"}"#,
            r#"{ "id":3, "name":"c" }"#,
            r#"{"name":"d","id":4}"#,
            r#"{"id":5,"name":"e","extra":[1,{"x":null}]}"#,
            r#"{"id":6,"name":"f","id":7}"#,
            r#"{"id":-8,"name":"g"}"#,
            r#"{"id":09,"name":"h"}"#,
            r#"{"id":10,"name":"tab	here"}"#,
            r#"{"id":11,"name":null}"#,
            r#"{"id":1.0,"name":"k"}"#,
            r#"{"id":18446744073709551615,"name":"l"}"#,
            r#"{"id":18446744073709551616,"name":"m"}"#,
            r#"{"id":13,"name":"n"}x"#,
            r#"{"id":14,"name":"o"#,
            r#"{"id":15,"name":"\u00e9"}"#,
            r#"{"id":16,"name":"é"}"#,
            r#"{"id":17 ,"name":"p"}"#,
            r#"{"id":18,"name" :"q"}"#,
            "{\"id\":19,\"name\":\"r\u{1}\"}",
            "{\"id\":20,\"name\":\"s\u{7f}\"}",
            r#"{"id":1e2,"name":"t"}"#,
            r#"{"id":-0,"name":"u"}"#,
            r#"{"id":0,"name":"v"}"#,
            r#"{"id":00,"name":"w"}"#,
            r#"{"id":9999999999999999999,"name":"x"}"#,
            r#"{"id":true,"name":"y"}"#,
            r#"{"id":21,"name":{"z":1}}"#,
            r#"{"id":22,"name":["z"]}"#,
            r#"{"id":23,"name":"a","name":"b"}"#,
            r#"{"id":24}"#,
            r#"{"id":25,"name":"c"}}"#,
            r#"{"id":26,"name":"a long name that crosses several words, é€"}"#,
            r#"{"id":27,"name":"d""#,
            r#"{"id":28,"name":1}"#,
            r#"{"id":29,"name":"e","x":1}"#,
        ];
        let input = lines.join("\n");
        let (rows, dead, _) = read_all(input.as_bytes(), 1 << 16, 100, Format::JsonLines);
        let (mut expected_rows, mut expected_reasons) = (Vec::new(), Vec::new());
        for (index, line) in lines.iter().enumerate() {
            // The field named is the one whose value is not of its type, if any.
            let object = serde_json::from_str::<serde_json::Value>(line).ok();
            let object = object.as_ref().and_then(|value| value.as_object());
            let field = object.and_then(|o| match (o.get("id"), o.get("name")) {
                (Some(id), _) if !id.is_u64() => Some("id"),
                (_, Some(name)) if !name.is_string() => Some("name"),
                _ => None,
            });
            match (serde_json::from_str::<Row>(line), field) {
                (Ok(row), _) => expected_rows.push(row),
                (Err(e), Some(field)) => {
                    expected_reasons.push((index as u64 + 1, format!("invalid JSON record: field {field}: {e}"), line.to_string()))
                }
                (Err(e), None) => expected_reasons.push((index as u64 + 1, format!("invalid JSON record: {e}"), line.to_string())),
            }
        }
        assert_eq!(rows, expected_rows);
        let reasons: Vec<(u64, String, String)> = dead.into_iter().map(|d| (d.line, d.reason, d.raw)).collect();
        assert_eq!(reasons, expected_reasons);
        assert_eq!((rows.len(), reasons.len()), (15, 21), "{rows:?} {reasons:?}");
        let named = reasons.iter().filter(|(_, reason, _)| reason.starts_with("invalid JSON record: field ")).count();
        assert_eq!(named, 10, "{reasons:#?}");
    }

    crate::__csv_record_with_serde! {
        "serde",
        #[derive(Clone, Debug, PartialEq)]
        struct Login {
            at: crate::record::Rfc3339Millis,
            user: String,
            attempts: u32,
        }
    }

    fn login(text: &str, user: &str, attempts: u32) -> Login {
        Login { at: text.parse().unwrap(), user: user.into(), attempts }
    }

    /// The records of `input` read in `format`, and its dead letters as (line, reason).
    fn logins(input: &str, format: Format) -> (Vec<Login>, Vec<(u64, String)>) {
        let mut reader = std::io::BufReader::with_capacity(16, input.as_bytes());
        let mut decoder = LineDecoder::new("logins", "in".into(), format);
        let (mut records, mut dead) = (Vec::new(), Vec::new());
        while decoder.read(&mut reader, 3, &mut records, &mut dead) != ReadStatus::Done {}
        (records, dead.into_iter().map(|d| (d.line, d.reason)).collect())
    }

    const EXPECTED_FORM: &str = "expected the form 2026-01-01T00:00:00.250Z or 2026-01-01T01:00:00+01:00";

    /// RFC 3339 times in CSV, at any offset, quoted or not; a malformed one goes to dead letters
    /// with the column, the field, what is wrong and the form expected.
    #[test]
    fn csv_lines_read_rfc3339_times_and_dead_letter_bad_ones() {
        let input = "at,user,attempts\n\
            2026-01-01T00:00:00.250Z,ana,1\n\
            2026-01-01T01:00:00+01:00,bo,2\n\
            \"2025-12-31T19:00:00.5-05:00\",\"c,d\",3\n\
            2026-13-01T00:00:00Z,eve,4\n\
            1767225600000,fay,5\n\
            2026-01-01 00:00:00Z,gus,6\n\
            2024-02-29t12:00:00z,hal,7\n";
        let (records, dead) = logins(input, Format::Csv);
        assert_eq!(
            records,
            vec![
                login("2026-01-01T00:00:00.250Z", "ana", 1),
                login("2026-01-01T00:00:00Z", "bo", 2),
                login("2026-01-01T00:00:00.500Z", "c,d", 3),
                login("2024-02-29T12:00:00Z", "hal", 7),
            ]
        );
        assert_eq!(records[0].at.millis(), 1_767_225_600_250);
        assert_eq!(
            dead,
            vec![
                (5, format!("column 1 (at): not an RFC 3339 time: month 13 is out of range; {EXPECTED_FORM} in \"2026-13-01T00:00:00Z\"")),
                (
                    6,
                    format!(
                        "column 1 (at): not an RFC 3339 time: expected '-' after the year at character 5, found \"225600\"; \
                         {EXPECTED_FORM} in \"1767225600000\""
                    )
                ),
                (
                    7,
                    format!(
                        "column 1 (at): not an RFC 3339 time: expected 'T' between the date and the time at character 11, \
                         found \" 00:00\"; {EXPECTED_FORM} in \"2026-01-01 00:00:00Z\""
                    )
                ),
            ]
        );
        // Written back in UTC with milliseconds, and read again as the same records.
        let mut written = String::new();
        for record in &records {
            record.write_csv(&mut written);
            written.push('\n');
        }
        assert!(written.starts_with("2026-01-01T00:00:00.250Z,ana,1\n2026-01-01T00:00:00.000Z,bo,2\n"), "{written}");
        assert_eq!(logins(&written, Format::Csv), (records, vec![]));
    }

    /// RFC 3339 times in JSON lines, read in place or by serde_json (an escaped string); a
    /// malformed one goes to dead letters naming the field, what is wrong and the form expected.
    #[test]
    fn json_lines_read_rfc3339_times_and_dead_letter_bad_ones() {
        let input = [
            r#"{"at":"2026-01-01T00:00:00.250Z","user":"ana","attempts":1}"#,
            r#"{"attempts":2,"user":"bo","at":"2026-01-01T01:00:00+01:00"}"#,
            r#"{"at":"2026-01-01T00:00:00\u005a","user":"cy","attempts":3}"#,
            r#"{"at":"2026-13-01T00:00:00Z","user":"eve","attempts":4}"#,
            r#"{"at":1767225600000,"user":"fay","attempts":5}"#,
            r#"{"at":"2026-01-01T00:00:00","user":"gus","attempts":6}"#,
            r#"{"at":"2026-01-01T00:00:00Z","user":"hal","attempts":-1}"#,
        ]
        .join("\n");
        let (records, dead) = logins(&input, Format::JsonLines);
        assert_eq!(
            records,
            vec![
                login("2026-01-01T00:00:00.250Z", "ana", 1),
                login("2026-01-01T00:00:00Z", "bo", 2),
                login("2026-01-01T00:00:00Z", "cy", 3)
            ]
        );
        let reasons: Vec<(u64, &str)> = dead.iter().map(|(line, reason)| (*line, reason.as_str())).collect();
        assert_eq!(reasons.len(), 4, "{reasons:#?}");
        let month = format!(
            "invalid JSON record: field at: not an RFC 3339 time: month 13 is out of range; {EXPECTED_FORM}, \
             found \"2026-13-01T00:00:00Z\" at line 1 column 28"
        );
        assert_eq!(reasons[0], (4, month.as_str()));
        let number = "invalid JSON record: field at: invalid type: integer `1767225600000`, expected an RFC 3339 time as a string";
        assert!(reasons[1].0 == 5 && reasons[1].1.starts_with(number), "{reasons:#?}");
        let offset = "invalid JSON record: field at: not an RFC 3339 time: expected the offset (Z, +hh:mm or -hh:mm) at character 20";
        assert!(reasons[2].0 == 6 && reasons[2].1.starts_with(offset), "{reasons:#?}");
        assert!(
            reasons[3].0 == 7 && reasons[3].1.starts_with("invalid JSON record: field attempts: invalid value: integer `-1`"),
            "{reasons:#?}"
        );
        // Written by serde_json in UTC with milliseconds, and read again as the same records.
        let written: Vec<String> = records.iter().map(|r| serde_json::to_string(r).unwrap()).collect();
        assert_eq!(written[1], r#"{"at":"2026-01-01T00:00:00.000Z","user":"bo","attempts":2}"#);
        assert!(written.iter().all(|line| Login::from_plain_json_line(line).is_some()));
        assert_eq!(logins(&written.join("\n"), Format::JsonLines), (records, vec![]));
    }
}
