//! The deterministic Nexmark generator behind the `gen:` sources of `Person`, `Auction` and `Bid`.
//!
//! The stream is the specification's: event `e` (from 0) sits at offset `e % 50` of its block of
//! 50; offset 0 is a person, offsets 1 to 3 are auctions and offsets 4 to 49 are bids (1 : 3 : 46,
//! the mix of the published Flink runs: 2% persons, 6% auctions, 92% bids). Person `k` and auction
//! `k` (counting each kind from 0) get id `1000 + k`. Each type's generator produces the records
//! of its kind among the first `count` events; record `i` of a type is a pure function of `i` and
//! the options, so the same seed gives the same events for any worker count, and three sources
//! with the same options agree on ids.
//!
//! Choices, after the specification (its "hot" ratios are those of the reference generator):
//! * an auction's seller is, 3 times in 4, the latest person rounded down to a multiple of 4 (a
//!   hot seller), otherwise one of the latest 1000 persons;
//! * a bid's auction is, 1 time in 2, the latest auction rounded down to an even id (a hot
//!   auction), otherwise one of the latest 100 auctions; its bidder is, 3 times in 4, the latest
//!   person rounded down to a multiple of 4, otherwise one of the latest 1000 persons;
//! * prices are `round(10^(6u) * 100)` cents for `u` uniform in [0, 1): from $1 to $1,000,000,
//!   log-uniform; an auction's reserve is its initial bid plus another such price;
//! * categories are 10 to 14, uniform; an auction closes `auction_length_ms / 2` to
//!   `3 * auction_length_ms / 2` after it opens.
//!
//! Options (`gen:count=100000,seed=7,...`), the same for the three types:
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `count` | 1000000 | events of all three kinds; each type's source produces its share |
//! | `seed` | 42 | changes every random choice |
//! | `partitions` | 16 | partitions each type's sequence is dealt into |
//! | `events_per_sec` | 10000 | events (all kinds) per second of event time |
//! | `start_ms` | 1767225600000 | event time of event 0 (2026-01-01T00:00:00Z) |
//! | `disorder_ms` | 0 | each event's time is moved back by up to this much (0: in order) |
//! | `auction_length_ms` | 10000 | mean time an auction stays open |

use std::sync::Arc;

use paystream_engine::source::Generator;
use paystream_engine::{GenOptions, Generate, Result};

use super::event::{Auction, Bid, Person};
use crate::generator::mix;

/// Events per block: 1 person, 3 auctions, 46 bids.
pub const EVENTS_PER_BLOCK: u64 = 50;
/// Persons per block (offset 0).
pub const PERSONS_PER_BLOCK: u64 = 1;
/// Auctions per block (offsets 1 to 3).
pub const AUCTIONS_PER_BLOCK: u64 = 3;
/// Bids per block (offsets 4 to 49).
pub const BIDS_PER_BLOCK: u64 = 46;
/// The id of the first person and of the first auction.
pub const FIRST_ID: u64 = 1000;
/// The first category id; there are [`CATEGORIES`].
pub const FIRST_CATEGORY: u64 = 10;
/// Number of categories.
pub const CATEGORIES: u64 = 5;

const HOT_SELLER_RATIO: u64 = 4;
const HOT_BIDDER_RATIO: u64 = 4;
const HOT_AUCTION_RATIO: u64 = 2;
const ACTIVE_PERSONS: u64 = 1000;
const IN_FLIGHT_AUCTIONS: u64 = 100;

const FIRST_NAMES: [&str; 11] = ["Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter"];
const LAST_NAMES: [&str; 9] = ["Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris"];
const CITIES: [(&str, &str); 10] = [
    ("Phoenix", "AZ"),
    ("Los Angeles", "CA"),
    ("San Francisco", "CA"),
    ("Boise", "ID"),
    ("Portland", "OR"),
    ("Bend", "OR"),
    ("Redmond", "WA"),
    ("Seattle", "WA"),
    ("Kent", "WA"),
    ("Cheyenne", "WY"),
];
const CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];

/// The options shared by the three generators.
#[derive(Clone, Debug)]
pub struct NexmarkShape {
    count: u64,
    seed: u64,
    partitions: u64,
    events_per_sec: u64,
    start_ms: u64,
    disorder_ms: u64,
    auction_length_ms: u64,
}

impl NexmarkShape {
    /// Reads the options.
    pub fn from_options(o: &mut GenOptions) -> Result<NexmarkShape> {
        let shape = NexmarkShape {
            count: o.get("count", 1_000_000)?,
            seed: o.get("seed", 42)?,
            partitions: o.get("partitions", 16)?,
            events_per_sec: o.get("events_per_sec", 10_000)?,
            start_ms: o.get("start_ms", 1_767_225_600_000)?,
            disorder_ms: o.get("disorder_ms", 0)?,
            auction_length_ms: o.get("auction_length_ms", 10_000)?,
        };
        for (name, value) in [("partitions", shape.partitions), ("events_per_sec", shape.events_per_sec)] {
            if value == 0 {
                return Err(paystream_engine::Error::msg(format!("generator option {name} must be at least 1")));
            }
        }
        Ok(shape)
    }

    /// A random number for event `event`, one of several independent `stream`s.
    fn random(&self, event: u64, stream: u64) -> u64 {
        mix(self.seed ^ mix(event.wrapping_mul(16).wrapping_add(stream)))
    }

    /// A uniform number in [0, 1) for event `event`.
    fn unit(&self, event: u64, stream: u64) -> f64 {
        (self.random(event, stream) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// How many of the first `count` events fall at offsets `first..first + per_block` of their
    /// block.
    fn kind_count(&self, first: u64, per_block: u64) -> u64 {
        let blocks = self.count / EVENTS_PER_BLOCK;
        let rest = self.count % EVENTS_PER_BLOCK;
        blocks * per_block + rest.saturating_sub(first).min(per_block)
    }

    /// Persons among the first `count` events.
    pub fn persons(&self) -> u64 {
        self.kind_count(0, PERSONS_PER_BLOCK)
    }

    /// Auctions among the first `count` events.
    pub fn auctions(&self) -> u64 {
        self.kind_count(PERSONS_PER_BLOCK, AUCTIONS_PER_BLOCK)
    }

    /// Bids among the first `count` events.
    pub fn bids(&self) -> u64 {
        self.kind_count(PERSONS_PER_BLOCK + AUCTIONS_PER_BLOCK, BIDS_PER_BLOCK)
    }

    /// The event time of event `event`: its place in the stream, moved back by its disorder.
    pub fn ts_ms(&self, event: u64) -> u64 {
        let base = self.start_ms + event.saturating_mul(1_000) / self.events_per_sec;
        let disorder = if self.disorder_ms == 0 { 0 } else { self.random(event, 0) % (self.disorder_ms + 1) };
        base.saturating_sub(disorder)
    }

    /// Index (from 0) of the latest person created at or before event `event`.
    fn last_person(event: u64) -> u64 {
        event / EVENTS_PER_BLOCK
    }

    /// Index (from 0) of the latest auction created at or before event `event` (which must come
    /// after the first auction).
    fn last_auction(event: u64) -> u64 {
        let created = event / EVENTS_PER_BLOCK * AUCTIONS_PER_BLOCK + (event % EVENTS_PER_BLOCK).min(AUCTIONS_PER_BLOCK);
        created.saturating_sub(1)
    }

    /// A person for event `event` to refer to: a hot one `hot_ratio - 1` times in `hot_ratio`,
    /// otherwise one of the latest active ones.
    fn some_person(&self, event: u64, stream: u64, hot_ratio: u64) -> u64 {
        let last = Self::last_person(event);
        let r = self.random(event, stream);
        let index = if !r.is_multiple_of(hot_ratio) {
            last / hot_ratio * hot_ratio
        } else {
            last - (r / hot_ratio) % (last + 1).min(ACTIVE_PERSONS)
        };
        FIRST_ID + index
    }

    /// A price in cents, log-uniform from $1 to $1,000,000.
    fn price_cents(&self, event: u64, stream: u64) -> u64 {
        (10f64.powf(self.unit(event, stream) * 6.0) * 100.0).round() as u64
    }

    /// Person `k`.
    pub fn person(&self, k: u64) -> Person {
        let event = k * EVENTS_PER_BLOCK;
        let first = FIRST_NAMES[(self.random(event, 1) % FIRST_NAMES.len() as u64) as usize];
        let last = LAST_NAMES[(self.random(event, 2) % LAST_NAMES.len() as u64) as usize];
        let (city, state) = CITIES[(self.random(event, 3) % CITIES.len() as u64) as usize];
        let card = self.random(event, 4);
        let group = |g: u64| (card >> (16 * g)) % 10_000;
        Person {
            id: FIRST_ID + k,
            name: format!("{first} {last}").into(),
            email_address: format!("{}@{}.com", first.to_lowercase(), last.to_lowercase()).into(),
            credit_card: format!("{:04} {:04} {:04} {:04}", group(0), group(1), group(2), group(3)).into(),
            city: city.into(),
            state: state.into(),
            ts_ms: self.ts_ms(event),
        }
    }

    /// Auction `k`.
    pub fn auction(&self, k: u64) -> Auction {
        let event = k / AUCTIONS_PER_BLOCK * EVENTS_PER_BLOCK + PERSONS_PER_BLOCK + k % AUCTIONS_PER_BLOCK;
        let ts_ms = self.ts_ms(event);
        let initial_bid_cents = self.price_cents(event, 1);
        let length_ms = self.auction_length_ms / 2 + self.random(event, 2) % (self.auction_length_ms + 1);
        Auction {
            id: FIRST_ID + k,
            item_name: format!("item-{}", self.random(event, 3) % 10_000).into(),
            description: format!("lot {}", FIRST_ID + k).into(),
            initial_bid_cents,
            reserve_cents: initial_bid_cents + self.price_cents(event, 4),
            ts_ms,
            expires_ms: ts_ms + length_ms,
            seller: self.some_person(event, 5, HOT_SELLER_RATIO),
            category: FIRST_CATEGORY + self.random(event, 6) % CATEGORIES,
        }
    }

    /// Bid `k`.
    pub fn bid(&self, k: u64) -> Bid {
        let event = k / BIDS_PER_BLOCK * EVENTS_PER_BLOCK + PERSONS_PER_BLOCK + AUCTIONS_PER_BLOCK + k % BIDS_PER_BLOCK;
        let last = Self::last_auction(event);
        let r = self.random(event, 1);
        let auction = if !r.is_multiple_of(HOT_AUCTION_RATIO) {
            last / HOT_AUCTION_RATIO * HOT_AUCTION_RATIO
        } else {
            last - (r / HOT_AUCTION_RATIO) % (last + 1).min(IN_FLIGHT_AUCTIONS)
        };
        Bid {
            auction: FIRST_ID + auction,
            bidder: self.some_person(event, 2, HOT_BIDDER_RATIO),
            price_cents: self.price_cents(event, 3),
            channel: CHANNELS[(self.random(event, 4) % CHANNELS.len() as u64) as usize].into(),
            ts_ms: self.ts_ms(event),
        }
    }
}

impl Generate for Person {
    fn generator(options: &mut GenOptions) -> Result<Generator<Self>> {
        let shape = NexmarkShape::from_options(options)?;
        Ok(Generator { count: shape.persons(), partitions: shape.partitions, record: Arc::new(move |k| shape.person(k)) })
    }
}

impl Generate for Auction {
    fn generator(options: &mut GenOptions) -> Result<Generator<Self>> {
        let shape = NexmarkShape::from_options(options)?;
        Ok(Generator { count: shape.auctions(), partitions: shape.partitions, record: Arc::new(move |k| shape.auction(k)) })
    }
}

impl Generate for Bid {
    fn generator(options: &mut GenOptions) -> Result<Generator<Self>> {
        let shape = NexmarkShape::from_options(options)?;
        Ok(Generator { count: shape.bids(), partitions: shape.partitions, record: Arc::new(move |k| shape.bid(k)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn shape(options: &[(&str, &str)]) -> NexmarkShape {
        let map: BTreeMap<String, String> = options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut o = GenOptions::new(map);
        let s = NexmarkShape::from_options(&mut o).unwrap();
        o.finish().unwrap();
        s
    }

    #[test]
    fn the_mix_is_1_3_46() {
        let s = shape(&[("count", "5000")]);
        assert_eq!((s.persons(), s.auctions(), s.bids()), (100, 300, 4600));
        // Events 50, 51 and 52: a person and two auctions.
        let s = shape(&[("count", "53")]);
        assert_eq!((s.persons(), s.auctions(), s.bids()), (2, 5, 46));
        let s = shape(&[("count", "1")]);
        assert_eq!((s.persons(), s.auctions(), s.bids()), (1, 0, 0));
    }

    #[test]
    fn references_point_back_in_time() {
        let s = shape(&[]);
        for k in 0..10_000 {
            let b = s.bid(k);
            let event = k / BIDS_PER_BLOCK * EVENTS_PER_BLOCK + 4 + k % BIDS_PER_BLOCK;
            assert!(b.auction >= FIRST_ID && b.auction - FIRST_ID < event / EVENTS_PER_BLOCK * 3 + 3, "{b:?}");
            assert!(b.bidder >= FIRST_ID && b.bidder - FIRST_ID <= event / EVENTS_PER_BLOCK, "{b:?}");
            assert!((100..=100_000_000).contains(&b.price_cents));
        }
        for k in 0..3_000 {
            let a = s.auction(k);
            assert!(a.seller - FIRST_ID <= k / 3, "{a:?}");
            assert!((FIRST_CATEGORY..FIRST_CATEGORY + CATEGORIES).contains(&a.category));
            assert!(a.reserve_cents > a.initial_bid_cents && a.expires_ms > a.ts_ms);
        }
    }

    #[test]
    fn in_order_by_default_and_disorder_is_bounded() {
        let s = shape(&[]);
        assert!((1..10_000).all(|k| s.bid(k - 1).ts_ms <= s.bid(k).ts_ms));
        let d = shape(&[("disorder_ms", "300")]);
        for event in 0..10_000 {
            assert!(s.ts_ms(event) - d.ts_ms(event) <= 300);
        }
        assert!((1..10_000).any(|k| d.bid(k - 1).ts_ms > d.bid(k).ts_ms));
    }
}
