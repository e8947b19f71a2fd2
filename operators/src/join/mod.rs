//! Joins of two keyed streams: interval joins, window joins and temporal (as-of) joins with a
//! changing table. Each is built by merging both sides into one keyed stream of [`Side`]s and
//! running one keyed logic over it, so joins take part in checkpoints like windows do.
//!
//! Late records: a record behind its partition's watermark cannot be joined deterministically
//! (whether its partners are still held depends on timing), so, as in Flink's interval join, it is
//! dropped and counted (`late_dropped:STEP`). The temporal join is more lenient (see
//! [`TemporalJoin::retention`]). Records within the out-of-orderness bound are never late.

mod interval;
mod temporal;
mod windowed;

use paystream_engine::{Data, Duration, Key, KeyedStream, Stream};
use serde::{Deserialize, Serialize};

use crate::window::Windows;

pub use interval::IntervalJoin;
pub use temporal::TemporalJoin;
pub use windowed::WindowJoin;

/// A record of one side of a join.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Side<A, B> {
    /// From the left (probe) stream.
    Left(A),
    /// From the right (build, or table) stream.
    Right(B),
}

/// A joined pair: the left record and its partner (`None`: unmatched, or no table row).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Joined<K, A, B> {
    /// The join key.
    pub key: K,
    /// The left record.
    pub left: A,
    /// Its partner.
    pub right: Option<B>,
}

/// A pair joined within one window.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WindowJoined<K, A, B> {
    /// Window start (inclusive), ms since the epoch.
    pub start_ms: u64,
    /// Window end (exclusive).
    pub end_ms: u64,
    /// The join key.
    pub key: K,
    /// The left record.
    pub left: A,
    /// The right record.
    pub right: B,
}

/// Joins on keyed streams.
pub trait JoinExt<'scope, K, A> {
    /// Pairs each left record `a` with every right record `b` of the same key whose event time is
    /// in `[a.ts + lower, a.ts + upper]` (Flink's interval join); see [`IntervalJoin`].
    fn interval_join<B: Data>(self, right: KeyedStream<'scope, K, B>) -> IntervalJoin<'scope, K, A, B>;

    /// Pairs left and right records of the same key that fall in the same window; pairs are
    /// emitted when the window fires.
    fn window_join<B: Data>(self, right: KeyedStream<'scope, K, B>, windows: impl Into<Windows>) -> WindowJoin<'scope, K, A, B>;

    /// Joins each left record with the version of a table as of the record's event time; the table
    /// is a changelog keyed like the stream (`Some(row)` inserts or updates, `None` deletes).
    /// Results are never revised when the table changes later.
    fn temporal_join<B: Data>(self, table: KeyedStream<'scope, K, Option<B>>) -> TemporalJoin<'scope, K, A, B>;
}

impl<'scope, K: Key, A: Data> JoinExt<'scope, K, A> for KeyedStream<'scope, K, A> {
    fn interval_join<B: Data>(self, right: KeyedStream<'scope, K, B>) -> IntervalJoin<'scope, K, A, B> {
        IntervalJoin::new(self, right)
    }

    fn window_join<B: Data>(self, right: KeyedStream<'scope, K, B>, windows: impl Into<Windows>) -> WindowJoin<'scope, K, A, B> {
        WindowJoin::new(self, right, windows.into())
    }

    fn temporal_join<B: Data>(self, table: KeyedStream<'scope, K, Option<B>>) -> TemporalJoin<'scope, K, A, B> {
        TemporalJoin::new(self, table)
    }
}

/// Merges both sides into one keyed stream and splits off records `late(message_time, ts, side)`
/// calls late, counting them as `late_dropped:NAME`.
fn merge<'scope, K: Key, A: Data, B: Data>(
    name: &str,
    left: KeyedStream<'scope, K, A>,
    right: KeyedStream<'scope, K, B>,
    late: impl Fn(u64, u64, &Side<A, B>) -> bool + 'static,
) -> KeyedStream<'scope, K, Side<A, B>> {
    let left = left.map_values(&format!("{name}:left"), Side::Left);
    let right = right.map_values(&format!("{name}:right"), Side::Right);
    let (kept, dropped) = left.union(right).divert(&format!("{name}:lateness"), late);
    let _ = dropped.count_as(&format!("{name}:late"), &format!("late_dropped:{name}"));
    kept
}

fn signed_add(ts: u64, delta: i64) -> u64 {
    (ts as i128 + delta as i128).clamp(0, u64::MAX as i128) as u64
}

/// `ts - delta`, clamped to `0..=u64::MAX` (`-delta` would overflow for `i64::MIN`).
fn signed_sub(ts: u64, delta: i64) -> u64 {
    (ts as i128 - delta as i128).clamp(0, u64::MAX as i128) as u64
}

/// A duration as signed milliseconds, for join bounds.
pub fn signed_millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u64) as i64
}

#[doc(hidden)]
pub fn _assert_stream<'scope, T>(_s: &Stream<'scope, T>) {}
