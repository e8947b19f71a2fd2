//! The payment events jobs consume.
//!
//! CSV columns, in order:
//! * `Payment`: `ts_ms,txn_id,card_id,merchant_id,amount_cents,currency,country,status`
//! * `Authorization`: `txn_id,ts_ms,auth_code`
//! * `BlockedCard`: `ts_ms,card_id,blocked` (`true` or `false`)
//! * `Adjustment`: `ts_ms,txn_id,merchant_id,amount_cents,kind` (`REFUND` or `CHARGEBACK`)

use paystream_engine::record::{plain_field, plain_json_string};
use paystream_engine::{csv_record, CsvField};
use serde::{Deserialize, Serialize};

use crate::text::ShortText;

/// The outcome of a payment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// Accepted by the issuer.
    Approved,
    /// Refused by the issuer.
    Declined,
    /// Approved, then reversed.
    Reversed,
    /// Not yet decided.
    Pending,
}

impl Status {
    /// Every status.
    pub const ALL: [Status; 4] = [Status::Approved, Status::Declined, Status::Reversed, Status::Pending];

    /// The status with this exact name.
    #[inline]
    fn named(text: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|status| status.as_str() == text)
    }

    /// The name used in CSV and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Approved => "APPROVED",
            Status::Declined => "DECLINED",
            Status::Reversed => "REVERSED",
            Status::Pending => "PENDING",
        }
    }
}

impl CsvField for Status {
    fn parse_field(text: &str) -> Result<Self, String> {
        let text = text.trim();
        Status::named(text).ok_or_else(|| format!("unknown status {text:?}; expected APPROVED, DECLINED, REVERSED or PENDING"))
    }
    fn write_field(&self, out: &mut String) {
        out.push_str(self.as_str())
    }
    /// A name exactly as written, read in place; any other text takes `parse_field`'s path.
    #[inline]
    fn parse_at(line: &str, at: usize) -> Option<(Self, usize)> {
        let text = plain_field(line, at)?;
        Some((Status::named(text)?, at + text.len()))
    }
    /// A name exactly as written, in quotes (as serde writes it), compared in place; anything else
    /// goes to serde_json. The quoted names are spelt out (they are `as_str`'s): compared as
    /// constants they cost less than a search through `Status::ALL`, on the JSON fast path that
    /// every payment line takes (figures in BENCHMARKS.md).
    #[inline]
    fn parse_json_at(line: &str, at: usize) -> Option<(Self, usize)> {
        let rest = line.as_bytes().get(at..)?;
        [
            (&b"\"APPROVED\""[..], Status::Approved),
            (b"\"DECLINED\"", Status::Declined),
            (b"\"REVERSED\"", Status::Reversed),
            (b"\"PENDING\"", Status::Pending),
        ]
        .into_iter()
        .find(|(quoted, _)| rest.starts_with(quoted))
        .map(|(quoted, status)| (status, at + quoted.len()))
    }
}

csv_record! {
    /// A card payment.
    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct Payment {
        /// Event time: when the payment happened, ms since the Unix epoch.
        pub ts_ms: u64,
        /// Transaction id, such as `t42`.
        pub txn_id: ShortText,
        /// The card.
        pub card_id: u64,
        /// The merchant.
        pub merchant_id: u64,
        /// Amount in the currency's minor unit.
        pub amount_cents: i64,
        /// ISO 4217 currency code.
        pub currency: ShortText,
        /// ISO 3166 country code of where the payment was made.
        pub country: ShortText,
        /// Outcome.
        pub status: Status,
    }
}

csv_record! {
    /// An issuer's authorization of a payment.
    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct Authorization {
        /// The payment's transaction id.
        pub txn_id: ShortText,
        /// Event time of the authorization, ms since the Unix epoch.
        pub ts_ms: u64,
        /// The issuer's authorization code.
        pub auth_code: ShortText,
    }
}

/// What kind of money went back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AdjustmentKind {
    /// The merchant refunded the payment.
    Refund,
    /// The cardholder disputed it and the issuer took the money back.
    Chargeback,
}

impl AdjustmentKind {
    /// Every kind.
    pub const ALL: [AdjustmentKind; 2] = [AdjustmentKind::Refund, AdjustmentKind::Chargeback];

    /// The kind with this exact name.
    #[inline]
    fn named(text: &str) -> Option<AdjustmentKind> {
        AdjustmentKind::ALL.into_iter().find(|kind| kind.as_str() == text)
    }

    /// The name used in CSV and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            AdjustmentKind::Refund => "REFUND",
            AdjustmentKind::Chargeback => "CHARGEBACK",
        }
    }
}

impl CsvField for AdjustmentKind {
    fn parse_field(text: &str) -> Result<Self, String> {
        let text = text.trim();
        AdjustmentKind::named(text).ok_or_else(|| format!("unknown adjustment kind {text:?}; expected REFUND or CHARGEBACK"))
    }
    /// A name exactly as written, read in place; any other text takes `parse_field`'s path.
    #[inline]
    fn parse_at(line: &str, at: usize) -> Option<(Self, usize)> {
        let text = plain_field(line, at)?;
        Some((AdjustmentKind::named(text)?, at + text.len()))
    }
    /// A name exactly as written, in quotes (as serde writes it); anything else goes to serde_json.
    #[inline]
    fn parse_json_at(line: &str, at: usize) -> Option<(Self, usize)> {
        let (text, end) = plain_json_string(line, at)?;
        Some((AdjustmentKind::named(text)?, end))
    }
    fn write_field(&self, out: &mut String) {
        out.push_str(self.as_str())
    }
}

csv_record! {
    /// A refund or chargeback of an earlier payment.
    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct Adjustment {
        /// When it happened, ms since the Unix epoch.
        pub ts_ms: u64,
        /// The payment it takes back.
        pub txn_id: ShortText,
        /// The payment's merchant.
        pub merchant_id: u64,
        /// How much goes back (positive).
        pub amount_cents: i64,
        /// Refund or chargeback.
        pub kind: AdjustmentKind,
    }
}

csv_record! {
    /// A change to the blocked-cards table: a card blocked or unblocked at an event time.
    #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct BlockedCard {
        /// When the change takes effect, ms since the Unix epoch.
        pub ts_ms: u64,
        /// The card.
        pub card_id: u64,
        /// `true`: blocked from now on; `false`: unblocked.
        pub blocked: bool,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paystream_engine::source::parse_csv_line;
    use paystream_engine::CsvRecord;

    #[test]
    fn payment_csv_round_trip() {
        let p = Payment {
            ts_ms: 1_767_225_600_123,
            txn_id: "t42".into(),
            card_id: 9,
            merchant_id: 3,
            amount_cents: 1_250,
            currency: "EUR".into(),
            country: "DE".into(),
            status: Status::Declined,
        };
        let mut line = String::new();
        p.write_csv(&mut line);
        assert_eq!(line, "1767225600123,t42,9,3,1250,EUR,DE,DECLINED");
        assert_eq!(parse_csv_line::<Payment>(&line).unwrap(), p);
        assert_eq!(Payment::csv_header(), "ts_ms,txn_id,card_id,merchant_id,amount_cents,currency,country,status");
    }

    /// The JSON fast path (`from_plain_json_line`, with the field readers of `ShortText`,
    /// `Status`, `AdjustmentKind` and the integers) answers for the lines serde writes for the
    /// payment records (but those with escapes or integers of 19 digits or more), with serde_json's record,
    /// and for any other line either answers with serde_json's record or leaves the line to
    /// serde_json.
    #[test]
    fn plain_json_lines_decode_as_serde_json_does() {
        fn check<T: CsvRecord + serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(
            records: &[T],
            rng: &mut u64,
        ) -> (usize, usize) {
            let mut next = move |n: usize| {
                *rng ^= *rng << 13;
                *rng ^= *rng >> 7;
                *rng ^= *rng << 17;
                (*rng % n as u64) as usize
            };
            let (mut fast, mut total) = (0, 0);
            for record in records {
                let line = serde_json::to_string(record).expect("encodes");
                match T::from_plain_json_line(&line) {
                    Some(got) => assert_eq!(&got, record, "{line}"),
                    // Only escapes and integers of 19 digits or more are left to serde_json.
                    None => assert!(line.contains('\\') || line.split(|c: char| !c.is_ascii_digit()).any(|d| d.len() >= 19), "{line}"),
                }
                for _ in 0..20 {
                    let mutated = paystream_engine::testing::mutate_json_line(&line, &mut next);
                    total += 1;
                    if let Some(got) = T::from_plain_json_line(&mutated) {
                        fast += 1;
                        let want = serde_json::from_str::<T>(&mutated);
                        assert_eq!(want.as_ref().ok(), Some(&got), "{mutated}: serde_json gives {want:?}");
                    }
                }
            }
            (fast, total)
        }
        let mut options = paystream_engine::GenOptions::new(
            [("count", "600"), ("late_every", "7"), ("geo_every", "5"), ("card_testing_every", "3"), ("unauthorized_every", "4")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        let shape = crate::generator::Shape::from_options(&mut options).expect("options");
        let mut payments: Vec<Payment> = (0..600).map(|i| shape.payment(i)).collect();
        payments[0].txn_id = "a\"quote".into();
        payments[1].country = "ü".into();
        payments[2].currency = "twenty-three bytes long".into();
        payments[3].amount_cents = -5;
        payments[4].amount_cents = i64::MIN;
        payments[5].ts_ms = u64::MAX;
        let authorizations: Vec<Authorization> = (0..300).map(|i| shape.authorization(i)).collect();
        let adjustments: Vec<Adjustment> = (0..300).map(|i| shape.adjustment(i)).collect();
        let mut rng = 0x5eed_u64;
        let (fast, total) = check(&payments, &mut rng);
        assert!(fast > total / 50 && fast < total, "mutated payment lines read by the fast path: {fast} of {total}");
        check(&authorizations, &mut rng);
        check(&adjustments, &mut rng);
    }

    #[test]
    fn payment_json_uses_status_names() {
        let line =
            r#"{"ts_ms":5,"txn_id":"t1","card_id":1,"merchant_id":2,"amount_cents":3,"currency":"USD","country":"US","status":"PENDING"}"#;
        let p: Payment = serde_json::from_str(line).unwrap();
        assert_eq!(p.status, Status::Pending);
    }

    /// Names read in place are what `parse_field` reads; the lines with any other text give the
    /// general path's record or error.
    #[test]
    fn names_read_in_place_are_read_as_parse_field_reads_them() {
        fn check<T: CsvField + PartialEq + std::fmt::Debug>(text: &str) -> bool {
            for (line, at) in [(text.to_string(), 0), (format!("x,{text}"), 2), (format!("{text},y"), 0), (format!("ab,{text},y"), 3)] {
                if let Some((value, end)) = T::parse_at(&line, at) {
                    assert_eq!(Ok(&value), T::parse_field(&line[at..end]).as_ref(), "{line:?}");
                    assert_eq!(Some(&line[at..end]), text.split(',').next(), "{line:?}");
                } else if text.len() < 20
                    && !text.contains(',')
                    && !text.contains('"')
                    && text.trim() == text
                    && T::parse_field(text).is_ok()
                {
                    panic!("{text:?} should be read in place");
                }
            }
            T::parse_at(text, 0).is_some()
        }
        let texts = [
            "APPROVED",
            "DECLINED",
            "REVERSED",
            "PENDING",
            "REFUND",
            "CHARGEBACK",
            "",
            " PENDING",
            "PENDING ",
            "pending",
            "PEND",
            "PENDINGS",
            "APPROVED\"",
            "\"APPROVED\"",
            "REFUND,",
            "CHARGE",
            "é",
        ];
        let read: usize = texts.iter().map(|t| usize::from(check::<Status>(t)) + usize::from(check::<AdjustmentKind>(t))).sum();
        // Four statuses, two kinds, and "REFUND," (the field ends at its comma).
        assert_eq!(read, 7);
        for status in ["APPROVED", " DECLINED", "REVERSED ", "\"PENDING\"", "MAYBE", ""] {
            let line = format!("5,t1,1,2,3,USD,US,{status}");
            assert_eq!(Payment::from_csv_line(&line), paystream_engine::record::from_csv_line_general::<Payment>(&line), "{line:?}");
        }
    }

    #[test]
    fn bad_lines_name_the_column() {
        let e = parse_csv_line::<Payment>("5,t1,1,2,abc,USD,US,APPROVED").unwrap_err();
        assert!(e.contains("amount_cents"), "{e}");
        let e = parse_csv_line::<Payment>("5,t1,1,2,3,USD,US,MAYBE").unwrap_err();
        assert!(e.contains("unknown status"), "{e}");
        let e = parse_csv_line::<Payment>("5,t1,1").unwrap_err();
        assert!(e.contains("expected 8 columns"), "{e}");
    }
}
