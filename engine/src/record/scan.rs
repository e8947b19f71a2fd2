//! Word-at-a-time byte scanning for the CSV and JSON fast paths: runs of digits and their value,
//! and the first byte of a class (a field's end, a string's end), eight bytes at a time.

/// The value of 1 to `max_digits` ASCII digits, or `None` for anything else (including the empty
/// text). With at most `max_digits` digits, the value is below `10^max_digits`, so it fits the
/// type whose maximum has `max_digits + 1` digits.
#[inline]
pub(super) fn parse_plain_digits(bytes: &[u8], max_digits: usize) -> Option<u64> {
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

pub(super) const ONES: u64 = 0x0101_0101_0101_0101;
pub(super) const HIGH_BITS: u64 = 0x8080_8080_8080_8080;
pub(super) const LOW_SEVEN: u64 = 0x7f7f_7f7f_7f7f_7f7f;

/// The run of 1 to `max_digits` ASCII digits that starts at `bytes[at]`: its value and the index
/// just past it. `None` if there is no digit there, or more than `max_digits` (then the value
/// might not fit: see [`parse_plain_digits`], whose value this is for the same digits).
///
/// Eight bytes are read at a time where the slice has them: the run's length in the word comes
/// from a mask of its non-digits, and up to eight digits are combined with three multiplications.
#[inline(always)]
pub(super) fn scan_digits(bytes: &[u8], at: usize, max_digits: usize) -> Option<(u64, usize)> {
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

pub(super) const POWERS_OF_TEN: [u64; 9] = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000, 100_000_000];

/// The high bit of each byte of `word` that is not an ASCII digit, and no other bit.
#[inline(always)]
pub(super) fn non_digits(word: u64) -> u64 {
    let low = word & LOW_SEVEN;
    // Per byte, with no carry into the next: the high bit of `low + 0x46` is set iff `low > b'9'`,
    // that of `low + 0x50` iff `low >= b'0'`; a byte with its own high bit set is no digit either.
    let above_nine = low + ONES * u64::from(0x7f - b'9');
    let from_zero = low + ONES * u64::from(0x80 - b'0');
    (word | above_nine | !from_zero) & HIGH_BITS
}

/// The value of the first `count` (1 to 8) bytes of `word` (little-endian), which are ASCII digits.
#[inline(always)]
pub(super) fn leading_digits_value(word: u64, count: usize) -> u64 {
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
pub(super) trait ByteClass {
    /// The high bit of each byte of `word` (little-endian) in the class, and no other bit.
    fn marks(word: u64) -> u64;
}

/// The index of the first byte at or after `from` in the class `C`, or `None` if there is none.
#[inline(always)]
pub(super) fn first_marked<C: ByteClass>(bytes: &[u8], from: usize) -> Option<usize> {
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
pub(super) fn plain_field_end(bytes: &[u8], at: usize) -> Option<usize> {
    match first_marked::<FieldStops>(bytes, at) {
        Some(end) => (bytes[end] == b',').then_some(end),
        None => Some(bytes.len().max(at)),
    }
}

/// The high bit of each byte of `word` (little-endian) that equals `byte`, and no other bit.
#[inline(always)]
pub(super) fn byte_positions(word: u64, byte: u8) -> u64 {
    let x = word ^ (u64::from(byte) * ONES);
    // Per byte: the high bit of `(x & 0x7f) + 0x7f` is set iff its low seven bits are not all
    // zero, with no carry into the next byte; or-ing `x` adds its own high bit.
    !(((x & LOW_SEVEN) + LOW_SEVEN) | x | LOW_SEVEN)
}

/// The bytes that end a plain JSON string's text: `"`, `\` or a control character (below 0x20).
pub(super) struct StringStops;

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
pub(super) struct FieldStops;

impl ByteClass for FieldStops {
    #[inline(always)]
    fn marks(word: u64) -> u64 {
        byte_positions(word, b',') | byte_positions(word, b'"')
    }
}

/// `line[start..end]`, or `None` if that is not a slice of the line at character boundaries.
/// Two one-sided `str::get`s, always inlined: `str::get` with a range can stay a call of its own
/// in the fast paths that use this (figures in BENCHMARKS.md).
#[inline(always)]
pub(super) fn slice(line: &str, start: usize, end: usize) -> Option<&str> {
    line.get(start..)?.get(..end.checked_sub(start)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::fixtures::Rng;

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
}
