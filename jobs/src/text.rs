//! [`ShortText`]: a string that keeps up to 22 bytes inline, so that copying transaction ids and
//! country codes between the steps of a job does not allocate.
//!
//! It compares, hashes (so lands in the same key group), serializes and prints exactly as the
//! `String` with the same text; only longer texts go to the heap.

use std::fmt;
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const INLINE: usize = 22;

/// A string held inline when at most 22 bytes long.
#[derive(Clone)]
pub struct ShortText(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<str>),
}

impl ShortText {
    /// The text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline { len, bytes } => std::str::from_utf8(&bytes[..*len as usize]).expect("ShortText holds UTF-8 it was made from"),
            Repr::Heap(text) => text,
        }
    }
}

impl From<&str> for ShortText {
    fn from(text: &str) -> Self {
        if text.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..text.len()].copy_from_slice(text.as_bytes());
            ShortText(Repr::Inline { len: text.len() as u8, bytes })
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

impl<'de> Deserialize<'de> for ShortText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(ShortText::from)
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
            assert_eq!(ShortText::from(string), short);
        }
        assert!(matches!(ShortText::from("exactly-twenty-two-by!").0, Repr::Inline { .. }));
        assert!(matches!(ShortText::from("twenty-three bytes long").0, Repr::Heap(_)));
        let (a, b) = (ShortText::from("t10"), ShortText::from("t9"));
        assert_eq!(a.cmp(&b), "t10".cmp("t9"));
        assert_ne!(a, b);
    }
}
