//! The payment events jobs consume.
//!
//! CSV columns, in order:
//! * `Payment`: `ts_ms,txn_id,card_id,merchant_id,amount_cents,currency,country,status`
//! * `Authorization`: `txn_id,ts_ms,auth_code`
//! * `BlockedCard`: `ts_ms,card_id,blocked` (`true` or `false`)
//! * `Adjustment`: `ts_ms,txn_id,merchant_id,amount_cents,kind` (`REFUND` or `CHARGEBACK`)

use paystream_engine::record::plain_field;
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
        match text.trim() {
            "APPROVED" => Ok(Status::Approved),
            "DECLINED" => Ok(Status::Declined),
            "REVERSED" => Ok(Status::Reversed),
            "PENDING" => Ok(Status::Pending),
            other => Err(format!("unknown status {other:?}; expected APPROVED, DECLINED, REVERSED or PENDING")),
        }
    }
    fn write_field(&self, out: &mut String) {
        out.push_str(self.as_str())
    }
    /// A name exactly as written, read in place; any other text takes `parse_field`'s path.
    #[inline]
    fn parse_at(line: &str, at: usize) -> Option<(Self, usize)> {
        let text = plain_field(line, at)?;
        let status = match text {
            "APPROVED" => Status::Approved,
            "DECLINED" => Status::Declined,
            "REVERSED" => Status::Reversed,
            "PENDING" => Status::Pending,
            _ => return None,
        };
        Some((status, at + text.len()))
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

impl CsvField for AdjustmentKind {
    fn parse_field(text: &str) -> Result<Self, String> {
        match text.trim() {
            "REFUND" => Ok(AdjustmentKind::Refund),
            "CHARGEBACK" => Ok(AdjustmentKind::Chargeback),
            other => Err(format!("unknown adjustment kind {other:?}; expected REFUND or CHARGEBACK")),
        }
    }
    /// A name exactly as written, read in place; any other text takes `parse_field`'s path.
    #[inline]
    fn parse_at(line: &str, at: usize) -> Option<(Self, usize)> {
        let text = plain_field(line, at)?;
        let kind = match text {
            "REFUND" => AdjustmentKind::Refund,
            "CHARGEBACK" => AdjustmentKind::Chargeback,
            _ => return None,
        };
        Some((kind, at + text.len()))
    }
    fn write_field(&self, out: &mut String) {
        out.push_str(match self {
            AdjustmentKind::Refund => "REFUND",
            AdjustmentKind::Chargeback => "CHARGEBACK",
        })
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
