//! [`ShortText`]: a string that keeps up to 22 bytes inline, so that reading, copying and
//! dropping transaction ids and country codes does not allocate.
//!
//! It compares, hashes (so lands in the same key group), serializes and prints exactly as the
//! `String` with the same text; only longer texts go to the heap. The text fields of
//! [`Payment`](crate::Payment), [`Authorization`](crate::Authorization) and
//! [`Adjustment`](crate::Adjustment) are `ShortText`s: building one from a `&str` is
//! `"t42".into()`, and `txn_id == "t42"` compares as with a `String`.

use std::fmt;
use std::hash::{Hash, Hasher};

use paystream_engine::record::{plain_field, plain_json_string};
use paystream_engine::CsvField;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const INLINE: usize = 22;

/// A string held inline when at most 22 bytes long.
#[derive(Clone)]
pub struct ShortText(Repr);

impl Default for ShortText {
    fn default() -> Self {
        ShortText::inline(b"")
    }
}

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<str>),
}

impl ShortText {
    /// The text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // SAFETY: the inline bytes are a copy of a whole `&str` or of ASCII bytes (see
            // `ShortText::inline`, the only maker of inline texts), so they are UTF-8; checking
            // again on every read would cost more than the rest of a comparison.
            Repr::Inline { len, bytes } => unsafe { std::str::from_utf8_unchecked(&bytes[..*len as usize]) },
            Repr::Heap(text) => text,
        }
    }
}

impl ShortText {
    /// The text of ASCII bytes, or `None` if a byte is not ASCII: for texts made byte by byte
    /// (generated ids), without `from_utf8`'s general check.
    pub fn from_ascii(bytes: &[u8]) -> Option<Self> {
        if !bytes.is_ascii() {
            return None;
        }
        if bytes.len() <= INLINE {
            Some(ShortText::inline(bytes))
        } else {
            std::str::from_utf8(bytes).ok().map(ShortText::from)
        }
    }

    /// `text` held inline: the bytes of a whole `&str` (or ASCII bytes), at most [`INLINE`]
    /// of them. The only maker of inline texts, which `as_str` relies on.
    #[inline]
    fn inline(text: &[u8]) -> Self {
        let mut bytes = [0u8; INLINE];
        bytes[..text.len()].copy_from_slice(text);
        ShortText(Repr::Inline { len: text.len() as u8, bytes })
    }
}

impl From<&str> for ShortText {
    fn from(text: &str) -> Self {
        if text.len() <= INLINE {
            ShortText::inline(text.as_bytes())
        } else {
            ShortText(Repr::Heap(text.into()))
        }
    }
}

impl From<String> for ShortText {
    fn from(text: String) -> Self {
        if text.len() <= INLINE {
            ShortText::from(text.as_str())
        } else {
            ShortText(Repr::Heap(text.into_boxed_str()))
        }
    }
}

impl From<ShortText> for String {
    fn from(text: ShortText) -> Self {
        match text.0 {
            Repr::Heap(text) => text.into_string(),
            Repr::Inline { .. } => text.as_str().to_string(),
        }
    }
}

impl std::ops::Deref for ShortText {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for ShortText {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for ShortText {}

impl PartialOrd for ShortText {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ShortText {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

/// As `str` (and `String`) hash: equal texts get equal key groups whichever type holds them.
impl Hash for ShortText {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl PartialEq<str> for ShortText {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ShortText {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for ShortText {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<ShortText> for &str {
    fn eq(&self, other: &ShortText) -> bool {
        *self == other.as_str()
    }
}

impl AsRef<str> for ShortText {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

/// Hash and order agree with `str`'s, so maps keyed by `ShortText` can be searched with a `&str`.
impl std::borrow::Borrow<str> for ShortText {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

/// A CSV field as a `String` reads and writes it; a plain field is read in place, without the
/// `String` a general read makes.
impl CsvField for ShortText {
    fn parse_field(text: &str) -> Result<Self, String> {
        Ok(ShortText::from(text))
    }
    fn write_field(&self, out: &mut String) {
        out.push_str(self.as_str())
    }
    #[inline(always)]
    fn parse_at(line: &str, at: usize) -> Option<(Self, usize)> {
        let text = plain_field(line, at)?;
        Some((ShortText::from(text), at + text.len()))
    }
    /// A JSON string without escapes, copied in place; anything else goes to serde_json.
    #[inline(always)]
    fn parse_json_at(line: &str, at: usize) -> Option<(Self, usize)> {
        plain_json_string(line, at).map(|(text, end)| (ShortText::from(text), end))
    }
}

impl fmt::Debug for ShortText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ShortText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ShortText {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Reads what a `String` reads; a borrowed text (a JSON string without escapes) is copied in
/// place, without a `String` in between.
impl<'de> Deserialize<'de> for ShortText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ShortText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<ShortText, E> {
                Ok(ShortText::from(text))
            }
            fn visit_string<E: serde::de::Error>(self, text: String) -> Result<ShortText, E> {
                Ok(ShortText::from(text))
            }
            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<ShortText, E> {
                std::str::from_utf8(bytes).map(ShortText::from).map_err(|_| E::invalid_value(serde::de::Unexpected::Bytes(bytes), &self))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, bytes: Vec<u8>) -> Result<ShortText, E> {
                String::from_utf8(bytes)
                    .map(ShortText::from)
                    .map_err(|e| E::invalid_value(serde::de::Unexpected::Bytes(e.as_bytes()), &self))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paystream_engine::checkpoint::{decode, encode};
    use paystream_engine::keygroup::stable_hash;

    #[test]
    fn behaves_as_the_string_with_the_same_text() {
        for text in ["", "t42", "DE", "ünïcödé", "exactly-twenty-two-by!", "twenty-three bytes long", "ünïcödé ünïcödé ünïcödé"]
        {
            let short = ShortText::from(text);
            let string = text.to_string();
            assert_eq!(short.as_str(), text);
            assert_eq!(short.len(), text.len());
            assert_eq!(stable_hash(&short), stable_hash(&string), "{text:?}");
            assert_eq!(encode(&short).expect("encodes"), encode(&string).expect("encodes"));
            assert_eq!(decode::<ShortText>(&encode(&string).expect("encodes")).expect("decodes"), short);
            assert_eq!(format!("{short} {short:?}"), format!("{string} {string:?}"));
            assert_eq!(String::from(short.clone()), string);
            assert_eq!(ShortText::from(string.clone()), short);
            assert_eq!(short, text);
            assert_eq!(short, string);
            assert_eq!(text, short);
            // Read as a String reads it: from CSV (in place and in general) and JSON.
            assert_eq!(ShortText::parse_field(text), Ok(short.clone()));
            if !text.contains(' ') {
                let line = format!("x,{text},y");
                assert_eq!(ShortText::parse_at(&line, 2), Some((short.clone(), 2 + text.len())));
            }
            let mut written = String::new();
            short.write_field(&mut written);
            assert_eq!(written, text);
            let json = serde_json::to_string(text).expect("encodes");
            assert_eq!(serde_json::from_str::<ShortText>(&json).expect("decodes"), short);
        }
        // Escapes make serde_json hand over an owned String; a number is refused as a String is.
        assert_eq!(serde_json::from_str::<ShortText>(r#""a\"b\u00e9""#).expect("decodes"), "a\"bé");
        let refused = serde_json::from_str::<ShortText>("42").unwrap_err().to_string();
        assert_eq!(refused, serde_json::from_str::<String>("42").unwrap_err().to_string());
        assert!(matches!(ShortText::from("exactly-twenty-two-by!").0, Repr::Inline { .. }));
        assert!(matches!(ShortText::from("twenty-three bytes long").0, Repr::Heap(_)));
        assert_eq!(ShortText::default(), "");
        assert_eq!(ShortText::from_ascii(b"t42"), Some(ShortText::from("t42")));
        assert_eq!(ShortText::from_ascii(b"twenty-three bytes long"), Some(ShortText::from("twenty-three bytes long")));
        assert_eq!(ShortText::from_ascii("ü".as_bytes()), None);
        let (a, b) = (ShortText::from("t10"), ShortText::from("t9"));
        assert_eq!(a.cmp(&b), "t10".cmp("t9"));
        assert_ne!(a, b);
    }
}
