//! [`csv_record!`](crate::csv_record): declares a record struct with its CSV columns, and writes
//! for it the single-pass CSV and JSON decoders, field after field.

/// Whether an attribute (its tokens inside `#[...]`) may change how serde reads a record: a
/// `serde(...)` attribute, or one behind `cfg_attr`. Records with one take no JSON fast path.
#[doc(hidden)]
#[macro_export]
macro_rules! __attribute_may_be_serde {
    (serde $($rest:tt)*) => {
        true
    };
    (cfg_attr $($rest:tt)*) => {
        true
    };
    ($($other:tt)*) => {
        false
    };
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
///
/// [`CsvRecord`]: crate::CsvRecord
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
        $(#[$($meta:tt)*])*
        $vis:vis struct $name:ident {
            $( $(#[$($fmeta:tt)*])* $fvis:vis $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$($meta)*])*
        #[derive($crate::__private::serde::Serialize, $crate::__private::serde::Deserialize)]
        #[serde(crate = $serde)]
        $vis struct $name {
            $( $(#[$($fmeta)*])* $fvis $field : $ty ),*
        }

        impl $crate::record::CsvRecord for $name {
            fn csv_columns() -> Vec<&'static str> {
                vec![$(stringify!($field)),*]
            }
            #[allow(unused_assignments)]
            fn from_csv_fields(fields: &[&str]) -> Result<Self, String> {
                const COLUMNS: &[&str] = &[$(stringify!($field)),*];
                if fields.len() != COLUMNS.len() {
                    return Err(format!("expected {} columns ({}), found {}", COLUMNS.len(), COLUMNS.join(","), fields.len()));
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
            #[allow(unused_assignments, unused_mut, unused_variables)]
            // Always inlined into the decoder's line loop, so the record is built where the
            // batch holds it (BENCHMARKS.md, "Connector seams").
            #[inline(always)]
            fn from_plain_csv_line(line: &str) -> Option<Self> {
                const COLUMNS: usize = <[&str]>::len(&[$(stringify!($field)),*]);
                // One pass, field after field, each read in place by its type. A line read here
                // holds no quote (no field read holds one) and exactly `COLUMNS` fields (a `,`
                // between fields, none inside), so the general path would split it into these
                // very fields and parse each as `parse_at` did: the record is the same.
                let bytes = line.as_bytes();
                let mut at = 0usize;
                let mut column = 0usize;
                let record = $name {
                    $( $field: {
                        if column > 0 {
                            if bytes.get(at) != Some(&b',') {
                                return None;
                            }
                            at += 1;
                        }
                        column += 1;
                        let (value, end) = <$ty as $crate::record::CsvField>::parse_at(line, at)?;
                        at = end;
                        value
                    } ),*
                };
                (COLUMNS > 0 && at == bytes.len()).then_some(record)
            }
            #[allow(unused_assignments)]
            fn from_plain_json_line(line: &str) -> Option<Self> {
                // A serde attribute may rename, skip or reinterpret fields: serde_json alone then.
                const SERDE_ATTRIBUTES: bool = false
                    $( || $crate::__attribute_may_be_serde!($($meta)*) )*
                    $( $( || $crate::__attribute_may_be_serde!($($fmeta)*) )* )*;
                const FIELDS: usize = <[&str]>::len(&[$(stringify!($field)),*]);
                if SERDE_ATTRIBUTES || FIELDS == 0 {
                    return None;
                }
                // One pass over `{"name0":value0,"name1":value1,...}`: the keys in field order,
                // each once, no white space (see `json_field` for the values).
                // Each key is compared with what comes before it (`{` or `,`) and its colon.
                let bytes = line.as_bytes();
                let mut at = 0usize;
                let mut index = 0usize;
                let record = $name {
                    $( $field: {
                        let key = if index == 0 {
                            concat!("{\"", stringify!($field), "\":")
                        } else {
                            concat!(",\"", stringify!($field), "\":")
                        };
                        index += 1;
                        at = $crate::record::json_key(bytes, at, key)?;
                        let (value, end) = <$ty as $crate::record::CsvField>::parse_json_at(line, at)?;
                        at = end;
                        value
                    } ),*
                };
                (bytes.get(at) == Some(&b'}') && at + 1 == bytes.len()).then_some(record)
            }
            #[allow(unused_variables)]
            fn json_field_at_fault(line: &str) -> Option<&'static str> {
                use $crate::__private::serde_json;
                const SERDE_ATTRIBUTES: bool = false
                    $( || $crate::__attribute_may_be_serde!($($meta)*) )*
                    $( $( || $crate::__attribute_may_be_serde!($($fmeta)*) )* )*;
                if SERDE_ATTRIBUTES {
                    return None;
                }
                let object = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(line).ok()?;
                $(
                    if let Some(value) = object.get(stringify!($field)) {
                        if <$ty as $crate::__private::serde::Deserialize>::deserialize(value).is_err() {
                            return Some(stringify!($field));
                        }
                    }
                )*
                None
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

#[cfg(test)]
mod tests {
    use crate::record::fixtures::{Cents, Kind, Rng};
    use crate::record::*;

    crate::__csv_record_with_serde! {
        "serde",
        /// Every kind of field a record is likely to hold.
        #[derive(Clone, Debug, PartialEq)]
        struct Mixed {
            ts_ms: u64,
            id: String,
            small: u8,
            delta: i64,
            cents: Cents,
            kind: Kind,
            note: Option<String>,
            count: Option<u32>,
            rate: f64,
            flag: bool,
        }
    }

    crate::__csv_record_with_serde! {
        "serde",
        #[derive(Clone, Debug, PartialEq)]
        struct Renamed {
            #[serde(rename = "b")]
            a: u64,
            c: u64,
        }
    }

    crate::__csv_record_with_serde! {
        "serde",
        #[derive(Clone, Debug, PartialEq)]
        struct Plain {
            b: u64,
            c: String,
        }
    }

    fn mixed(rng: &mut Rng) -> Mixed {
        let ids = [
            "t1",
            "",
            "a,b",
            "q\"uote",
            "back\\slash",
            "é€",
            "tab\there",
            "x}y",
            "{\"k\":1}",
            " pad ",
            "t1767225599154",
            "a rather longer id, é€",
        ];
        let notes = [None, Some(String::new()), Some("n".to_string()), Some("line\nbreak".to_string())];
        let big =
            [0u64, 1, 9, 10, 99, 12_345_678, 123_456_789, 1_767_225_599_154, 999_999_999_999_999_999, 9_999_999_999_999_999_999, u64::MAX];
        Mixed {
            ts_ms: big[rng.below(big.len())],
            id: rng.pick(&ids).to_string(),
            small: rng.next() as u8,
            delta: *rng.pick(&[0, -1, 1, -12_345_678, -999_999_999_999_999_999, i64::MIN, i64::MAX, 42]),
            cents: Cents(*rng.pick(&[0, -5, 123_456])),
            kind: *rng.pick(&[Kind::Sale, Kind::Refund]),
            note: rng.pick(&notes).clone(),
            count: *rng.pick(&[None, Some(0), Some(7), Some(u32::MAX)]),
            rate: *rng.pick(&[0.0, -0.0, 0.5, 1e300, -2.25, 1.0 / 3.0]),
            flag: rng.next().is_multiple_of(2),
        }
    }

    /// Changes a line the way a broken or hand-written file might (see
    /// [`crate::testing::mutate_json_line`]).
    fn mutate(rng: &mut Rng, line: &str) -> String {
        crate::testing::mutate_json_line(line, &mut |n| rng.below(n))
    }

    /// The JSON fast path answers for every line the file sink writes, with serde_json's record,
    /// and for any other line either answers with serde_json's record or leaves it to serde_json.
    #[test]
    fn plain_json_lines_decode_as_serde_json_does() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut fast, mut agreed, mut refused, mut escaped) = (0, 0, 0, 0);
        for _ in 0..3_000 {
            let record = mixed(&mut rng);
            let line = serde_json::to_string(&record).unwrap();
            // Strings with escapes are left to serde_json; any other line is read here.
            let expected = if line.contains('\\') { None } else { Some(record.clone()) };
            assert_eq!(Mixed::from_plain_json_line(&line), expected, "{line}");
            if line.contains('\\') {
                escaped += 1;
            }
            for _ in 0..20 {
                let changed = mutate(&mut rng, &line);
                let by_serde = serde_json::from_str::<Mixed>(&changed).ok();
                match Mixed::from_plain_json_line(&changed) {
                    Some(r) => {
                        assert_eq!(Some(r), by_serde, "{changed}");
                        fast += 1;
                    }
                    None if by_serde.is_some() => agreed += 1,
                    None => refused += 1,
                }
            }
        }
        // The mutations reach all three outcomes, so the checks above are not vacuous.
        assert!(fast > 500 && agreed > 2_000 && refused > 10_000 && escaped < 2_000, "{fast} {agreed} {refused} {escaped}");
    }

    /// Records whose serde attributes may change how a line reads take serde_json's path only.
    #[test]
    fn records_with_serde_attributes_take_no_json_fast_path() {
        assert_eq!(Renamed::from_plain_json_line(r#"{"a":1,"c":2}"#), None);
        assert_eq!(Renamed::from_plain_json_line(r#"{"b":1,"c":2}"#), None);
        assert_eq!(Plain::from_plain_json_line(r#"{"b":1,"c":"x"}"#), Some(Plain { b: 1, c: "x".into() }));
        // Nor do they name a field at fault: a renamed field's value is not under its own name.
        assert_eq!(Renamed::json_field_at_fault(r#"{"b":"x","c":2}"#), None);
        assert_eq!(Plain::json_field_at_fault(r#"{"b":"x","c":"y"}"#), Some("b"));
        assert_eq!(Plain::json_field_at_fault(r#"{"b":1,"c":2}"#), Some("c"));
        assert_eq!(Plain::json_field_at_fault(r#"{"b":1}"#), None);
        assert_eq!(Plain::json_field_at_fault("[1]"), None);
        for line in [
            r#"{"b":1,"c":"x"} "#,
            r#" {"b":1,"c":"x"}"#,
            r#"{"b":1, "c":"x"}"#,
            r#"{"b":[1],"c":"x"}"#,
            r#"{"b":1,"c":"\n"}"#,
            r#"{"b":1}"#,
            "{}",
            "{",
            "",
        ] {
            assert_eq!(Plain::from_plain_json_line(line), None, "{line}");
        }
    }

    crate::__csv_record_with_serde! {
        "serde",
        /// A field of each kind the CSV single pass reads, in place or through `parse_field`.
        #[derive(Clone, Debug, PartialEq)]
        struct Columns {
            ts_ms: u64,
            delta: i64,
            id: String,
            count: Option<u64>,
            flag: bool,
            rate: f64,
            kind: Kind,
            small: u8,
            offset: Option<i16>,
            cents: Cents,
        }
    }

    /// The CSV single pass answers for the plain lines, with the general path's record, and
    /// leaves every other line to the general path: `from_csv_line` gives the general path's
    /// record or error message for every line.
    #[test]
    fn plain_csv_lines_decode_as_the_general_path_does() {
        const NUMBERS: &[&str] = &[
            "",
            "0",
            "-0",
            "00",
            "007",
            "7",
            "-7",
            "+5",
            " 5",
            "5 ",
            "-",
            "--1",
            "5-",
            "1.5",
            "1e3",
            "99",
            "100",
            "255",
            "256",
            "-128",
            "-129",
            "32767",
            "-32768",
            "-32769",
            "12345678",
            "123456789",
            "1767225599154",
            "999999999999999999",
            "-999999999999999999",
            "9999999999999999999",
            "-9999999999999999999",
            "9223372036854775807",
            "-9223372036854775808",
            "9223372036854775808",
            "18446744073709551615",
            "18446744073709551616",
            "00000000000000000000001",
            "٣",
            "\"7\"",
            "7\"",
            "é",
        ];
        const TEXTS: &[&str] = &[
            "", "a", "t123456", " pad ", "a b", "é€", "¢", "x\"y", "\"q\"", "\"a,b\"", "\"\"", "SALE", "REFUND", "Sale", "true", "false",
            "True", "NaN", "inf", "-0.0", "1e300", "0.5", "x",
        ];
        /// Mostly a value the column's type reads (in place or not), sometimes anything.
        fn column(rng: &mut Rng, index: usize) -> String {
            let good: &[&str] = match index {
                0 => &[
                    "0",
                    "7",
                    "00",
                    "12345678",
                    "123456789",
                    "1767225599154",
                    "1234567812345678",
                    "9999999999999999999",
                    "18446744073709551615",
                ],
                1 => &["0", "-0", "7", "-7", "+7", "-1767225599154", "999999999999999999", "-999999999999999999", "-9223372036854775808"],
                2 => {
                    // Ids of every length, so that the fields after it start at every offset.
                    let alphabet = ["a", "Z", "0", "-", " ", "é", "€", "¢", "_"];
                    return (0..rng.below(20)).map(|_| *rng.pick(&alphabet)).collect();
                }
                3 => &["", "0", "42", "18446744073709551615"],
                4 => &["true", "false", " true"],
                5 => &["0", "1.5", "-2.25", "1e300", "NaN", " 1"],
                6 => &["SALE", "REFUND"],
                7 => &["0", "7", "99", "255", "+1"],
                8 => &["", "-0", "-5", "123", "32767", "-32768"],
                _ => &["0", "-5", "123456", "-9223372036854775808"],
            };
            let pool = match rng.below(40) {
                0 => NUMBERS,
                1 => TEXTS,
                _ => good,
            };
            let text = rng.pick(pool).to_string();
            if rng.below(40) == 0 {
                format!("\"{text}\"")
            } else {
                text
            }
        }
        let pieces = [",", "\"", " ", "-", "+", "0", "9", ".", "é", "€", "\r", "\t", ",,", "\"\""];
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let (mut plain, mut general_only, mut errors) = (0, 0, 0);
        let mut seen = std::collections::BTreeSet::new();
        for round in 0..40_000 {
            // Mostly the right number of columns, sometimes more or fewer.
            let columns = match rng.below(10) {
                0 => rng.below(10),
                1 => 11 + rng.below(2),
                _ => 10,
            };
            let fields: Vec<String> = (0..columns).map(|i| column(&mut rng, i)).collect();
            let mut line = fields.join(",");
            if round % 3 == 0 {
                let mut chars: Vec<char> = line.chars().collect();
                for _ in 0..1 + rng.below(2) {
                    let at = rng.below(chars.len() + 1);
                    let piece: Vec<char> = rng.pick(&pieces).chars().collect();
                    match rng.below(3) {
                        0 if at < chars.len() => {
                            chars.remove(at);
                        }
                        1 if at < chars.len() => {
                            chars.splice(at..at + 1, piece);
                        }
                        _ => {
                            chars.splice(at..at, piece);
                        }
                    }
                }
                line = chars.into_iter().collect();
            }
            if !seen.insert(line.clone()) {
                continue;
            }
            // Debug text: a NaN field is equal to itself there.
            let general = format!("{:?}", from_csv_line_general::<Columns>(&line));
            assert_eq!(format!("{:?}", Columns::from_csv_line(&line)), general, "{line:?}");
            match Columns::from_plain_csv_line(&line) {
                Some(record) => {
                    assert_eq!(format!("{:?}", Ok::<_, String>(record)), general, "{line:?}");
                    assert!(!line.contains('"'), "{line:?}");
                    plain += 1;
                }
                None if general.starts_with("Ok") => general_only += 1,
                None => errors += 1,
            }
            let mixed = format!("{:?}", from_csv_line_general::<Mixed>(&line));
            assert_eq!(format!("{:?}", Mixed::from_csv_line(&line)), mixed, "{line:?}");
        }
        // Every outcome is reached many times, so the checks above are not vacuous.
        assert!(plain > 2_000 && general_only > 5_000 && errors > 10_000, "{plain} {general_only} {errors}");
        // The lines the file sink writes are read in the single pass.
        for _ in 0..1_000 {
            let record = mixed(&mut rng);
            let mut line = String::new();
            record.write_csv(&mut line);
            let plain = Mixed::from_plain_csv_line(&line);
            // Integers are read in place up to one digit fewer than their type's maximum has.
            let in_place = record.ts_ms < 10u64.pow(19)
                && record.small < 100
                && record.delta.unsigned_abs() < 10u64.pow(18)
                && record.count.is_none_or(|count| count < 10u32.pow(9));
            assert_eq!(plain.is_some(), !line.contains('"') && in_place, "{line:?}");
            if let Some(plain) = plain {
                assert_eq!(Ok(plain), from_csv_line_general::<Mixed>(&line), "{line:?}");
            }
        }
    }
}
