//! The deterministic payment generator behind `gen:` sources.
//!
//! Record `i` is a pure function of the options and `i`, so the same seed gives the same events
//! for any worker count. The sequence is dealt round-robin into `partitions` partitions; each
//! partition moves forward in event time at the same pace, so the watermark advances evenly.
//!
//! Options (`gen:count=100000,seed=7,...`):
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `count` | 1000000 | events in all (the source ends after them); blocked cards 1000, adjustments 50000 |
//! | `seed` | 42 | changes every random choice |
//! | `partitions` | 16 | partitions the sequence is dealt into |
//! | `events_per_sec` | 10000 | events per second of event time |
//! | `start_ms` | 1767225600000 | event time of the first event (2026-01-01T00:00:00Z) |
//! | `cards` | 100000 | distinct cards, chosen uniformly |
//! | `merchants` | 1000 | distinct merchants |
//! | `skew` | 1.0 | Zipf exponent of merchant popularity (0: uniform) |
//! | `disorder_ms` | 1000 | each event's time is moved back by up to this much (bounded disorder) |
//! | `late_every` | 0 | every N-th event is moved back a further `late_by_ms` (0: none) |
//! | `late_by_ms` | 30000 | how far those events are moved back |
//! | `far_future_every` | 0 | every N-th payment (and its authorization) is moved forward `far_future_by_ms` (a producer with a wrong clock; 0: none) |
//! | `far_future_by_ms` | 3153600000000 | how far those payments are moved forward (100 years) |
//! | `auth_delay_ms` | 4000 | authorizations follow their payment by up to this much |
//! | `unauthorized_every` | 0 | every N-th payment gets no authorization (its slot authorizes an unknown `xN`; 0: never) |
//! | `card_testing_every` | 0 | every N-th block of 5 events is card testing: 4 small payments then a large one on one card |
//! | `geo_every` | 0 | every N-th pair of events is one card paying from two countries |
//! | `block_interval_ms` | 1000 | (blocked cards) event time between block/unblock events |
//! | `adjust_every` | 20 | (adjustments) adjustment `j` takes back payment `j * adjust_every`, up to 60 s later |

use std::sync::Arc;

use paystream_engine::source::Generator;
use paystream_engine::{GenOptions, Generate, Result};

use crate::payment::{Adjustment, AdjustmentKind, Authorization, BlockedCard, Payment, Status};
use crate::text::ShortText;

const COUNTRIES: [(&str, &str); 8] =
    [("US", "USD"), ("GB", "GBP"), ("DE", "EUR"), ("FR", "EUR"), ("NL", "EUR"), ("JP", "JPY"), ("BR", "BRL"), ("CA", "CAD")];

/// SplitMix64: a fast, well-mixed hash of a 64-bit counter.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `prefix` followed by `n` in decimal, as `format!("{prefix}{n}")` writes it, but without its
/// formatting machinery or an allocation (at most 21 bytes: held inline): transaction ids are made
/// for every generated event.
fn id(prefix: u8, n: u64) -> ShortText {
    debug_assert!(prefix.is_ascii());
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(n).as_bytes();
    let mut text = [0u8; 21];
    text[0] = prefix;
    text[1..=digits.len()].copy_from_slice(digits);
    ShortText::from_ascii(&text[..=digits.len()]).expect("an ASCII prefix and ASCII digits")
}

/// `code` (below 1,000,000) as six decimal digits, as `format!("{code:06}")` writes it.
fn auth_code(code: u64) -> ShortText {
    let mut text = [b'0'; 6];
    let mut rest = code;
    for digit in text.iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    ShortText::from_ascii(&text).expect("ASCII digits")
}

/// The shared shape of generated streams.
#[derive(Clone, Debug)]
pub struct Shape {
    count: u64,
    seed: u64,
    partitions: u64,
    events_per_sec: u64,
    start_ms: u64,
    cards: u64,
    /// Cumulative merchant weights, for Zipf sampling.
    merchant_cdf: Arc<Vec<f64>>,
    disorder_ms: u64,
    late_every: u64,
    late_by_ms: u64,
    far_future_every: u64,
    far_future_by_ms: u64,
    auth_delay_ms: u64,
    unauthorized_every: u64,
    card_testing_every: u64,
    geo_every: u64,
    block_interval_ms: u64,
    adjust_every: u64,
}

impl Shape {
    /// Reads the options.
    pub fn from_options(o: &mut GenOptions) -> Result<Shape> {
        let shape = Shape {
            count: o.get("count", 1_000_000)?,
            seed: o.get("seed", 42)?,
            partitions: o.get("partitions", 16)?,
            events_per_sec: o.get("events_per_sec", 10_000)?,
            start_ms: o.get("start_ms", 1_767_225_600_000)?,
            cards: o.get("cards", 100_000)?,
            merchant_cdf: Arc::new(Vec::new()),
            disorder_ms: o.get("disorder_ms", 1_000)?,
            late_every: o.get("late_every", 0)?,
            late_by_ms: o.get("late_by_ms", 30_000)?,
            far_future_every: o.get("far_future_every", 0)?,
            far_future_by_ms: o.get("far_future_by_ms", 3_153_600_000_000)?,
            auth_delay_ms: o.get("auth_delay_ms", 4_000)?,
            unauthorized_every: o.get("unauthorized_every", 0)?,
            card_testing_every: o.get("card_testing_every", 0)?,
            geo_every: o.get("geo_every", 0)?,
            block_interval_ms: o.get("block_interval_ms", 1_000)?,
            adjust_every: o.get("adjust_every", 20)?,
        };
        let merchants: u64 = o.get("merchants", 1_000)?;
        let skew: f64 = o.get("skew", 1.0)?;
        for (name, value) in
            [("partitions", shape.partitions), ("events_per_sec", shape.events_per_sec), ("cards", shape.cards), ("merchants", merchants)]
        {
            if value == 0 {
                return Err(paystream_engine::Error::msg(format!("generator option {name} must be at least 1")));
            }
        }
        if !(0.0..=10.0).contains(&skew) {
            return Err(paystream_engine::Error::msg(format!("generator option skew={skew} must be between 0 and 10")));
        }
        let mut cdf = Vec::with_capacity(merchants as usize);
        let mut total = 0.0;
        for rank in 0..merchants {
            total += 1.0 / ((rank + 1) as f64).powf(skew);
            cdf.push(total);
        }
        cdf.iter_mut().for_each(|c| *c /= total);
        Ok(Shape { merchant_cdf: Arc::new(cdf), ..shape })
    }

    fn random(&self, index: u64, stream: u64) -> u64 {
        mix(self.seed ^ mix(index.wrapping_mul(8).wrapping_add(stream)))
    }

    /// The event time of payment `index`: its place in the sequence, moved back by its disorder.
    pub fn payment_ts_ms(&self, index: u64) -> u64 {
        let base = self.start_ms.saturating_add(index.saturating_mul(1_000) / self.events_per_sec);
        let disorder = if self.disorder_ms == 0 { 0 } else { self.random(index, 1) % self.disorder_ms.saturating_add(1) };
        let late = if self.late_every > 0 && index % self.late_every == self.late_every - 1 { self.late_by_ms } else { 0 };
        let ts = base.saturating_sub(disorder.saturating_add(late));
        if self.far_future_every > 0 && index % self.far_future_every == self.far_future_every - 1 {
            ts.saturating_add(self.far_future_by_ms)
        } else {
            ts
        }
    }

    /// Payment `index`.
    pub fn payment(&self, index: u64) -> Payment {
        let mut p = self.plain_payment(index);
        let card_testing = self.card_testing_every > 0 && (index / 5) % self.card_testing_every == self.card_testing_every - 1;
        let geo = self.geo_every > 0 && (index / 2) % self.geo_every == self.geo_every - 1;
        if card_testing {
            // Four small payments, then a large one, on one card.
            let block = index / 5;
            p.card_id = 1 + mix(self.seed ^ block.wrapping_mul(31)) % self.cards;
            p.amount_cents =
                if index % 5 < 4 { 100 + (self.random(index, 10) % 100) as i64 } else { 60_000 + (self.random(index, 10) % 40_000) as i64 };
            p.status = Status::Approved;
        } else if geo {
            // The same card in two countries, a fraction of a second apart.
            let pair = index / 2;
            p.card_id = 1 + mix(self.seed ^ pair.wrapping_mul(37)) % self.cards;
            let home = (mix(p.card_id ^ self.seed) % COUNTRIES.len() as u64) as usize;
            let country = if index.is_multiple_of(2) { home } else { (home + 1) % COUNTRIES.len() };
            p.country = COUNTRIES[country].0.into();
            p.currency = COUNTRIES[country].1.into();
        }
        p
    }

    fn plain_payment(&self, index: u64) -> Payment {
        let card_id = 1 + self.random(index, 2) % self.cards;
        let u = (self.random(index, 3) >> 11) as f64 / (1u64 << 53) as f64;
        let merchant_id = 1 + self.merchant_cdf.partition_point(|c| *c < u).min(self.merchant_cdf.len() - 1) as u64;
        let home = (mix(card_id ^ self.seed) % COUNTRIES.len() as u64) as usize;
        let r = self.random(index, 4);
        // 3 payments in 1000 are made abroad.
        let country = if r % 1000 < 3 { (home + 1 + (r / 100) as usize % (COUNTRIES.len() - 1)) % COUNTRIES.len() } else { home };
        let amount = self.random(index, 5);
        // Mostly everyday amounts, with a long tail of large ones.
        let amount_cents = 100 + (amount % 9_900) as i64 + if amount.is_multiple_of(50) { ((amount >> 16) % 500_000) as i64 } else { 0 };
        let status = match self.random(index, 6) % 1000 {
            0..=899 => Status::Approved,
            900..=969 => Status::Declined,
            970..=984 => Status::Reversed,
            _ => Status::Pending,
        };
        Payment {
            ts_ms: self.payment_ts_ms(index),
            txn_id: id(b't', index),
            card_id,
            merchant_id,
            amount_cents,
            currency: COUNTRIES[country].1.into(),
            country: COUNTRIES[country].0.into(),
            status,
        }
    }

    /// The authorization of payment `index`, a little after it.
    pub fn authorization(&self, index: u64) -> Authorization {
        let unauthorized = self.unauthorized_every > 0 && index % self.unauthorized_every == self.unauthorized_every - 1;
        let delay = self.random(index, 7) % self.auth_delay_ms.saturating_add(1);
        Authorization {
            // An unauthorized payment's slot carries an authorization of some other transaction.
            txn_id: id(if unauthorized { b'x' } else { b't' }, index),
            ts_ms: self.payment_ts_ms(index).saturating_add(delay),
            auth_code: auth_code(self.random(index, 8) % 1_000_000),
        }
    }
}

impl Shape {
    /// Blocked-card event `index`: a card blocked every `block_interval_ms`; every 4th event
    /// unblocks the card blocked two events before.
    pub fn blocked_card(&self, index: u64) -> BlockedCard {
        let card = |j: u64| 1 + self.random(j, 9) % self.cards;
        let unblock = index % 4 == 3;
        BlockedCard {
            ts_ms: self.start_ms.saturating_add(index.saturating_mul(self.block_interval_ms)),
            card_id: if unblock { card(index - 2) } else { card(index) },
            blocked: !unblock,
        }
    }
}

impl Shape {
    /// Adjustment `index`: a refund (2 in 3) or chargeback of part or all of payment
    /// `index * adjust_every`, 1 to 60 s after it.
    pub fn adjustment(&self, index: u64) -> Adjustment {
        let of = index.saturating_mul(self.adjust_every.max(1));
        let p = self.payment(of);
        let r = self.random(index, 11);
        Adjustment {
            ts_ms: p.ts_ms.saturating_add(1_000 + r % 59_000),
            txn_id: p.txn_id,
            merchant_id: p.merchant_id,
            amount_cents: if r.is_multiple_of(4) { p.amount_cents / 2 } else { p.amount_cents },
            kind: if r.is_multiple_of(3) { AdjustmentKind::Chargeback } else { AdjustmentKind::Refund },
        }
    }
}

impl Generate for Adjustment {
    fn generator(options: &mut GenOptions) -> Result<Generator<Self>> {
        // By default, one adjustment per `adjust_every` of the default 1,000,000 payments.
        let count = options.get("count", 50_000u64)?;
        let mut shape = Shape::from_options(options)?;
        shape.count = count;
        Ok(Generator { count: shape.count, partitions: shape.partitions, record: Arc::new(move |i| shape.adjustment(i)) })
    }
}

impl Generate for BlockedCard {
    fn generator(options: &mut GenOptions) -> Result<Generator<Self>> {
        // A table changes far less often than payments arrive: 1,000 changes by default.
        let count = options.get("count", 1_000u64)?;
        let mut shape = Shape::from_options(options)?;
        shape.count = count;
        Ok(Generator { count: shape.count, partitions: shape.partitions, record: Arc::new(move |i| shape.blocked_card(i)) })
    }
}

impl Generate for Payment {
    fn generator(options: &mut GenOptions) -> Result<Generator<Self>> {
        let shape = Shape::from_options(options)?;
        Ok(Generator { count: shape.count, partitions: shape.partitions, record: Arc::new(move |i| shape.payment(i)) })
    }
}

impl Generate for Authorization {
    fn generator(options: &mut GenOptions) -> Result<Generator<Self>> {
        let shape = Shape::from_options(options)?;
        Ok(Generator { count: shape.count, partitions: shape.partitions, record: Arc::new(move |i| shape.authorization(i)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn shape(options: &[(&str, &str)]) -> Shape {
        let map: BTreeMap<String, String> = options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut o = GenOptions::new(map);
        let s = Shape::from_options(&mut o).unwrap();
        o.finish().unwrap();
        s
    }

    #[test]
    fn ids_are_prefixed_decimals() {
        for n in [0, 7, 10, 42, 99_999, 1_000_000, u64::MAX] {
            assert_eq!(id(b't', n), format!("t{n}"));
            assert_eq!(id(b'x', n), format!("x{n}"));
        }
        for code in [0, 7, 42, 123_456, 999_999] {
            assert_eq!(auth_code(code), format!("{code:06}"));
        }
    }

    #[test]
    fn same_seed_same_events() {
        let (a, b, c) = (shape(&[]), shape(&[]), shape(&[("seed", "7")]));
        for i in 0..1000 {
            assert_eq!(a.payment(i), b.payment(i));
        }
        assert!((0..1000).any(|i| a.payment(i) != c.payment(i)));
    }

    #[test]
    fn disorder_is_bounded_and_late_events_are_injected() {
        let s = shape(&[("disorder_ms", "500"), ("late_every", "10"), ("late_by_ms", "20000")]);
        for i in 0..10_000u64 {
            let base = 1_767_225_600_000 + i * 1000 / 10_000;
            let ts = s.payment_ts_ms(i);
            if i % 10 == 9 {
                assert!(base - ts >= 20_000 && base - ts <= 20_500);
            } else {
                assert!(base - ts <= 500);
            }
        }
    }

    /// Times near `u64::MAX` saturate instead of overflowing (a panic in a debug build, a wrap to
    /// 1970 in a release build); the source then sends such records to dead letters.
    #[test]
    fn times_near_the_end_of_time_saturate() {
        let start = (u64::MAX - 10).to_string();
        let max = u64::MAX.to_string();
        let s = shape(&[("start_ms", &start), ("disorder_ms", &max), ("auth_delay_ms", &max), ("block_interval_ms", &max)]);
        for i in 0..100u64 {
            // Each would overflow (or divide by zero) without saturation.
            s.payment_ts_ms(i);
            s.authorization(i);
            s.adjustment(i);
        }
        assert_eq!(s.blocked_card(5).ts_ms, u64::MAX);
        let s = shape(&[("start_ms", &start), ("disorder_ms", "0")]);
        assert_eq!(s.payment_ts_ms(1_000_000), u64::MAX);
        assert_eq!(s.adjustment(0).ts_ms, u64::MAX);
    }

    #[test]
    fn merchants_are_skewed() {
        let s = shape(&[("merchants", "100")]);
        let mut counts = vec![0u32; 101];
        for i in 0..100_000 {
            counts[s.payment(i).merchant_id as usize] += 1;
        }
        assert_eq!(counts[0], 0);
        assert!(counts[1] > 5 * counts[50], "{} vs {}", counts[1], counts[50]);
        let uniform = shape(&[("merchants", "100"), ("skew", "0")]);
        let top = (0..100_000).filter(|i| uniform.payment(*i).merchant_id == 1).count();
        assert!((700..1300).contains(&top), "{top}");
    }

    #[test]
    fn unknown_options_are_rejected() {
        let map: BTreeMap<String, String> = [("cout".to_string(), "5".to_string())].into();
        let mut o = GenOptions::new(map);
        Shape::from_options(&mut o).unwrap();
        let e = o.finish().unwrap_err().to_string();
        assert!(e.contains("cout"), "{e}");
    }
}
