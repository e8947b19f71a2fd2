//! Aggregates: how a window (or any group of records) is folded into one result.
//!
//! An [`Aggregate`] creates an accumulator, adds records to it, merges two accumulators and turns
//! one into a result, as Flink's `AggregateFunction`. Tuples of aggregates are aggregates, so one
//! pass computes several: `(Count, Sum::of(|p: &Payment| p.amount_cents))`.

use std::marker::PhantomData;

use paystream_engine::Data;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A fold over records of type `V`.
pub trait Aggregate<V>: 'static {
    /// The running state; it is saved in checkpoints, so it must be serializable.
    type Acc: Clone + Serialize + DeserializeOwned + 'static;
    /// The result.
    type Out: Data;
    /// A new, empty accumulator.
    fn init(&self) -> Self::Acc;
    /// Adds one record.
    fn add(&self, acc: &mut Self::Acc, value: &V);
    /// Merges `other` into `acc` (used by windows that combine partial results).
    fn merge(&self, acc: &mut Self::Acc, other: &Self::Acc);
    /// The result of an accumulator.
    fn result(&self, acc: &Self::Acc) -> Self::Out;
}

/// Counts records.
///
/// ```
/// use paystream_operators::{Aggregate, Count};
/// let mut acc = Aggregate::<&str>::init(&Count);
/// Count.add(&mut acc, &"a");
/// Count.add(&mut acc, &"b");
/// assert_eq!(Aggregate::<&str>::result(&Count, &acc), 2);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Count;

impl<V> Aggregate<V> for Count {
    type Acc = u64;
    type Out = u64;
    fn init(&self) -> u64 {
        0
    }
    fn add(&self, acc: &mut u64, _value: &V) {
        *acc += 1;
    }
    fn merge(&self, acc: &mut u64, other: &u64) {
        *acc += other;
    }
    fn result(&self, acc: &u64) -> u64 {
        *acc
    }
}

/// Sums a field of the records.
///
/// ```
/// use paystream_operators::{Aggregate, Sum};
/// let total = Sum::of(|x: &(u64, i64)| x.1);
/// let mut acc = total.init();
/// total.add(&mut acc, &(1, 250));
/// total.add(&mut acc, &(2, -50));
/// assert_eq!(total.result(&acc), 200);
/// ```
pub struct Sum<V, F: Fn(&V) -> i64> {
    field: F,
    _v: PhantomData<fn(&V)>,
}

impl<V, F: Fn(&V) -> i64> Sum<V, F> {
    /// The sum of `field` over the records.
    pub fn of(field: F) -> Self {
        Sum { field, _v: PhantomData }
    }
}

impl<V: 'static, F: Fn(&V) -> i64 + 'static> Aggregate<V> for Sum<V, F> {
    type Acc = i64;
    type Out = i64;
    fn init(&self) -> i64 {
        0
    }
    fn add(&self, acc: &mut i64, value: &V) {
        *acc += (self.field)(value);
    }
    fn merge(&self, acc: &mut i64, other: &i64) {
        *acc += other;
    }
    fn result(&self, acc: &i64) -> i64 {
        *acc
    }
}

/// The maximum of a field (`None` for no records).
///
/// ```
/// use paystream_operators::{Aggregate, Max};
/// let max = Max::of(|x: &i64| *x);
/// let mut acc = max.init();
/// for x in [3, 9, 4] { max.add(&mut acc, &x); }
/// assert_eq!(max.result(&acc), Some(9));
/// ```
pub struct Max<V, F: Fn(&V) -> i64> {
    field: F,
    _v: PhantomData<fn(&V)>,
}

impl<V, F: Fn(&V) -> i64> Max<V, F> {
    /// The maximum of `field` over the records.
    pub fn of(field: F) -> Self {
        Max { field, _v: PhantomData }
    }
}

impl<V: 'static, F: Fn(&V) -> i64 + 'static> Aggregate<V> for Max<V, F> {
    type Acc = Option<i64>;
    type Out = Option<i64>;
    fn init(&self) -> Option<i64> {
        None
    }
    fn add(&self, acc: &mut Option<i64>, value: &V) {
        let x = (self.field)(value);
        *acc = Some(acc.map_or(x, |a| a.max(x)));
    }
    fn merge(&self, acc: &mut Option<i64>, other: &Option<i64>) {
        *acc = match (*acc, *other) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    fn result(&self, acc: &Option<i64>) -> Option<i64> {
        *acc
    }
}

/// The minimum of a field (`None` for no records).
///
/// ```
/// use paystream_operators::{Aggregate, Min};
/// let min = Min::of(|x: &i64| *x);
/// let mut acc = min.init();
/// for x in [3, 9, -4] { min.add(&mut acc, &x); }
/// assert_eq!(min.result(&acc), Some(-4));
/// ```
pub struct Min<V, F: Fn(&V) -> i64> {
    field: F,
    _v: PhantomData<fn(&V)>,
}

impl<V, F: Fn(&V) -> i64> Min<V, F> {
    /// The minimum of `field` over the records.
    pub fn of(field: F) -> Self {
        Min { field, _v: PhantomData }
    }
}

impl<V: 'static, F: Fn(&V) -> i64 + 'static> Aggregate<V> for Min<V, F> {
    type Acc = Option<i64>;
    type Out = Option<i64>;
    fn init(&self) -> Option<i64> {
        None
    }
    fn add(&self, acc: &mut Option<i64>, value: &V) {
        let x = (self.field)(value);
        *acc = Some(acc.map_or(x, |a| a.min(x)));
    }
    fn merge(&self, acc: &mut Option<i64>, other: &Option<i64>) {
        *acc = match (*acc, *other) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    fn result(&self, acc: &Option<i64>) -> Option<i64> {
        *acc
    }
}

/// The count and the sum of a field, the most common pair in payment windows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CountSum {
    /// Number of records.
    pub count: u64,
    /// Sum of the field.
    pub sum: i64,
}

/// Counts records and sums a field.
///
/// ```
/// use paystream_operators::{Aggregate, CountAndSum, CountSum};
/// let cs = CountAndSum::of(|x: &i64| *x);
/// let mut acc = cs.init();
/// for x in [100, 250] { cs.add(&mut acc, &x); }
/// assert_eq!(cs.result(&acc), CountSum { count: 2, sum: 350 });
/// ```
pub struct CountAndSum<V, F: Fn(&V) -> i64> {
    field: F,
    _v: PhantomData<fn(&V)>,
}

impl<V, F: Fn(&V) -> i64> CountAndSum<V, F> {
    /// Count and sum of `field` over the records.
    pub fn of(field: F) -> Self {
        CountAndSum { field, _v: PhantomData }
    }
}

impl<V: 'static, F: Fn(&V) -> i64 + 'static> Aggregate<V> for CountAndSum<V, F> {
    type Acc = CountSum;
    type Out = CountSum;
    fn init(&self) -> CountSum {
        CountSum::default()
    }
    fn add(&self, acc: &mut CountSum, value: &V) {
        acc.count += 1;
        acc.sum += (self.field)(value);
    }
    fn merge(&self, acc: &mut CountSum, other: &CountSum) {
        acc.count += other.count;
        acc.sum += other.sum;
    }
    fn result(&self, acc: &CountSum) -> CountSum {
        *acc
    }
}

/// A user-supplied fold: a starting value, a step that adds one record, and a merge of two
/// partial results. The result must not depend on the order records arrive in (records of one
/// window may come from several partitions), as with Flink's `AggregateFunction`.
///
/// ```
/// use paystream_operators::{Aggregate, Fold};
/// // Largest and smallest amount in one pass.
/// let range = Fold::new(
///     (i64::MAX, i64::MIN),
///     |acc: &mut (i64, i64), x: &i64| { acc.0 = acc.0.min(*x); acc.1 = acc.1.max(*x); },
///     |acc, other| { acc.0 = acc.0.min(other.0); acc.1 = acc.1.max(other.1); },
/// );
/// let mut acc = range.init();
/// for x in [5, 1, 8] { range.add(&mut acc, &x); }
/// assert_eq!(range.result(&acc), (1, 8));
/// ```
pub struct Fold<V, S, A, M> {
    init: S,
    add: A,
    merge: M,
    _v: PhantomData<fn(&V)>,
}

impl<V, S, A, M> Fold<V, S, A, M>
where
    S: Data,
    A: Fn(&mut S, &V),
    M: Fn(&mut S, &S),
{
    /// A fold from `init`, adding records with `add` and combining partial folds with `merge`.
    pub fn new(init: S, add: A, merge: M) -> Self {
        Fold { init, add, merge, _v: PhantomData }
    }
}

impl<V: 'static, S: Data, A: Fn(&mut S, &V) + 'static, M: Fn(&mut S, &S) + 'static> Aggregate<V> for Fold<V, S, A, M> {
    type Acc = S;
    type Out = S;
    fn init(&self) -> S {
        self.init.clone()
    }
    fn add(&self, acc: &mut S, value: &V) {
        (self.add)(acc, value)
    }
    fn merge(&self, acc: &mut S, other: &S) {
        (self.merge)(acc, other)
    }
    fn result(&self, acc: &S) -> S {
        acc.clone()
    }
}

macro_rules! tuple_aggregate {
    ($($a:ident $i:tt),+) => {
        impl<V, $($a: Aggregate<V>),+> Aggregate<V> for ($($a,)+) {
            type Acc = ($($a::Acc,)+);
            type Out = ($($a::Out,)+);
            fn init(&self) -> Self::Acc {
                ($(self.$i.init(),)+)
            }
            fn add(&self, acc: &mut Self::Acc, value: &V) {
                $(self.$i.add(&mut acc.$i, value);)+
            }
            fn merge(&self, acc: &mut Self::Acc, other: &Self::Acc) {
                $(self.$i.merge(&mut acc.$i, &other.$i);)+
            }
            fn result(&self, acc: &Self::Acc) -> Self::Out {
                ($(self.$i.result(&acc.$i),)+)
            }
        }
    };
}
tuple_aggregate!(A 0, B 1);
tuple_aggregate!(A 0, B 1, C 2);
tuple_aggregate!(A 0, B 1, C 2, D 3);
tuple_aggregate!(A 0, B 1, C 2, D 3, E 4);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_percentile_is_the_one_of_percentiles() {
        let all = Percentiles::of(|x: &u64| *x);
        let (p50, p90, p99) = (Percentile::of(0.5, |x: &u64| *x), Percentile::of(0.9, |x: &u64| *x), Percentile::of(0.99, |x: &u64| *x));
        let mut rng = paystream_engine::testing::Rng(7);
        for n in [0usize, 1, 2, 10, 100, 1000] {
            let (mut a, mut b, mut c, mut d) = (all.init(), p50.init(), p90.init(), p99.init());
            for _ in 0..n {
                let x = rng.below(1_000_000);
                all.add(&mut a, &x);
                p50.add(&mut b, &x);
                p90.add(&mut c, &x);
                p99.add(&mut d, &x);
            }
            let q = all.result(&a);
            assert_eq!((p50.result(&b), p90.result(&c), p99.result(&d)), (q.p50, q.p90, q.p99), "{n} values");
        }
        assert_eq!(Percentile::of(f64::NAN, |x: &u64| *x).quantile, 0.0);
        assert_eq!(Percentile::of(2.0, |x: &u64| *x).quantile, 1.0);
    }

    #[test]
    fn quantile_sketches_survive_serialization() {
        let p = Percentiles::of(|x: &u64| *x);
        let mut acc = p.init();
        for x in [5u64, 70, 900, 12_345, 12_345] {
            p.add(&mut acc, &x);
        }
        let json = serde_json::to_string(&acc).unwrap();
        let back: QuantileSketch = serde_json::from_str(&json).unwrap();
        assert_eq!(p.result(&back), p.result(&acc));
    }

    #[test]
    fn tuples_aggregate_in_one_pass() {
        let agg = (Count, Sum::of(|x: &i64| *x), Max::of(|x: &i64| *x));
        let mut a = agg.init();
        let mut b = agg.init();
        for x in [4, 7] {
            agg.add(&mut a, &x);
        }
        agg.add(&mut b, &10);
        agg.merge(&mut a, &b);
        assert_eq!(agg.result(&a), (3, 21, Some(10)));
    }
}

/// The mean of a field (`None` for no records).
///
/// ```
/// use paystream_operators::{Aggregate, Average};
/// let avg = Average::of(|x: &i64| *x);
/// let mut acc = avg.init();
/// for x in [1, 2, 6] { avg.add(&mut acc, &x); }
/// assert_eq!(avg.result(&acc), Some(3.0));
/// ```
pub struct Average<V, F: Fn(&V) -> i64> {
    field: F,
    _v: PhantomData<fn(&V)>,
}

impl<V, F: Fn(&V) -> i64> Average<V, F> {
    /// The mean of `field` over the records.
    pub fn of(field: F) -> Self {
        Average { field, _v: PhantomData }
    }
}

impl<V: 'static, F: Fn(&V) -> i64 + 'static> Aggregate<V> for Average<V, F> {
    type Acc = (i128, u64);
    type Out = Option<f64>;
    fn init(&self) -> (i128, u64) {
        (0, 0)
    }
    fn add(&self, acc: &mut (i128, u64), value: &V) {
        acc.0 += i128::from((self.field)(value));
        acc.1 += 1;
    }
    fn merge(&self, acc: &mut (i128, u64), other: &(i128, u64)) {
        acc.0 += other.0;
        acc.1 += other.1;
    }
    fn result(&self, acc: &(i128, u64)) -> Option<f64> {
        (acc.1 > 0).then(|| acc.0 as f64 / acc.1 as f64)
    }
}

/// The exact number of distinct values of a field (a set per window and key: mind the memory).
///
/// ```
/// use paystream_operators::{Aggregate, CountDistinct};
/// let cards = CountDistinct::of(|p: &(u64, u64)| p.1);
/// let mut acc = cards.init();
/// for p in [(1, 7), (2, 7), (3, 9)] { cards.add(&mut acc, &p); }
/// assert_eq!(cards.result(&acc), 2);
/// ```
pub struct CountDistinct<V, D, F: Fn(&V) -> D> {
    field: F,
    _v: PhantomData<fn(&V) -> D>,
}

impl<V, D, F: Fn(&V) -> D> CountDistinct<V, D, F> {
    /// The number of distinct values of `field`.
    pub fn of(field: F) -> Self {
        CountDistinct { field, _v: PhantomData }
    }
}

impl<V: 'static, D: std::hash::Hash + Eq + Clone + Serialize + DeserializeOwned + 'static, F: Fn(&V) -> D + 'static> Aggregate<V>
    for CountDistinct<V, D, F>
{
    type Acc = std::collections::HashSet<D>;
    type Out = u64;
    fn init(&self) -> Self::Acc {
        Default::default()
    }
    fn add(&self, acc: &mut Self::Acc, value: &V) {
        acc.insert((self.field)(value));
    }
    fn merge(&self, acc: &mut Self::Acc, other: &Self::Acc) {
        acc.extend(other.iter().cloned());
    }
    fn result(&self, acc: &Self::Acc) -> u64 {
        acc.len() as u64
    }
}

/// The 50th, 90th and 99th percentiles and the maximum of a field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Quantiles {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest value.
    pub max: u64,
}

/// Percentiles of a non-negative field (amounts, latencies) with an HdrHistogram. By default it keeps
/// 2 significant digits (each reported value within 1% of the exact one, a few KB per window and
/// key); [`Percentiles::with_digits`] trades memory for precision.
///
/// ```
/// use paystream_operators::{Aggregate, Percentiles};
/// let latency = Percentiles::of(|ms: &u64| *ms);
/// let mut acc = latency.init();
/// for ms in 1..=100 { latency.add(&mut acc, &ms); }
/// let q = latency.result(&acc);
/// assert_eq!((q.p50, q.p90, q.p99, q.max), (50, 90, 99, 100));
/// ```
pub struct Percentiles<V, F: Fn(&V) -> u64> {
    field: F,
    digits: u8,
    _v: PhantomData<fn(&V)>,
}

impl<V, F: Fn(&V) -> u64> Percentiles<V, F> {
    /// Percentiles of `field`, to 2 significant digits.
    pub fn of(field: F) -> Self {
        Percentiles { field, digits: 2, _v: PhantomData }
    }

    /// Keeps `digits` significant digits (1 to 5); each one more multiplies the memory by ten.
    pub fn with_digits(mut self, digits: u8) -> Self {
        self.digits = digits.clamp(1, 5);
        self
    }
}

/// A histogram plus the exact maximum, so no reported percentile exceeds a value that was seen.
#[derive(Clone, Debug)]
pub struct QuantileSketch {
    histogram: hdrhistogram::Histogram<u32>,
    max: u64,
}

/// The saved form of a [`QuantileSketch`]: its precision, maximum and recorded `(value, count)`s.
#[derive(Serialize, Deserialize)]
struct SavedSketch {
    digits: u8,
    max: u64,
    counts: Vec<(u64, u64)>,
}

impl Serialize for QuantileSketch {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let counts = self.histogram.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value() as u64)).collect();
        SavedSketch { digits: self.histogram.sigfig(), max: self.max, counts }.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for QuantileSketch {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let saved = SavedSketch::deserialize(deserializer)?;
        let mut histogram = hdrhistogram::Histogram::new(saved.digits).map_err(serde::de::Error::custom)?;
        for (value, count) in saved.counts {
            histogram.record_n(value, count as u32).map_err(serde::de::Error::custom)?;
        }
        Ok(QuantileSketch { histogram, max: saved.max })
    }
}

impl<V: 'static, F: Fn(&V) -> u64 + 'static> Aggregate<V> for Percentiles<V, F> {
    type Acc = QuantileSketch;
    type Out = Quantiles;
    fn init(&self) -> Self::Acc {
        let histogram = hdrhistogram::Histogram::new(self.digits).expect("1 to 5 significant digits is a valid precision");
        QuantileSketch { histogram, max: 0 }
    }
    fn add(&self, acc: &mut Self::Acc, value: &V) {
        // Auto-resizing histograms only fail on values above u64::MAX / 2; saturate those.
        let x = (self.field)(value).min(u64::MAX / 4);
        let _ = acc.histogram.record(x);
        acc.max = acc.max.max(x);
    }
    fn merge(&self, acc: &mut Self::Acc, other: &Self::Acc) {
        let _ = acc.histogram.add(&other.histogram);
        acc.max = acc.max.max(other.max);
    }
    fn result(&self, acc: &Self::Acc) -> Quantiles {
        if acc.histogram.is_empty() {
            return Quantiles::default();
        }
        let at = |q: f64| acc.histogram.value_at_quantile(q).min(acc.max);
        Quantiles { p50: at(0.50), p90: at(0.90), p99: at(0.99), max: acc.max }
    }
}

/// One percentile of a non-negative field, with the same HdrHistogram as [`Percentiles`] and the
/// same value for it. Where a job reports only one percentile, this reads the histogram once per
/// result instead of three times, which matters where a window fires for many keys, as in
/// `throughput-windows` (figures in BENCHMARKS.md).
///
/// ```
/// use paystream_operators::{Aggregate, Percentile, Percentiles};
/// let p99 = Percentile::of(0.99, |ms: &u64| *ms);
/// let all = Percentiles::of(|ms: &u64| *ms);
/// let (mut a, mut b) = (p99.init(), all.init());
/// for ms in 1..=1000 { p99.add(&mut a, &ms); all.add(&mut b, &ms); }
/// assert_eq!(p99.result(&a), all.result(&b).p99);
/// ```
pub struct Percentile<V, F: Fn(&V) -> u64> {
    quantile: f64,
    sketch: Percentiles<V, F>,
}

impl<V, F: Fn(&V) -> u64> Percentile<V, F> {
    /// The `quantile` (0 to 1, such as 0.99; values outside are taken as 0 or 1) of `field`, to
    /// 2 significant digits.
    pub fn of(quantile: f64, field: F) -> Self {
        let quantile = if quantile.is_nan() { 0.0 } else { quantile.clamp(0.0, 1.0) };
        Percentile { quantile, sketch: Percentiles::of(field) }
    }

    /// Keeps `digits` significant digits (1 to 5), as [`Percentiles::with_digits`].
    pub fn with_digits(mut self, digits: u8) -> Self {
        self.sketch = self.sketch.with_digits(digits);
        self
    }
}

impl<V: 'static, F: Fn(&V) -> u64 + 'static> Aggregate<V> for Percentile<V, F> {
    type Acc = QuantileSketch;
    type Out = u64;
    fn init(&self) -> Self::Acc {
        self.sketch.init()
    }
    fn add(&self, acc: &mut Self::Acc, value: &V) {
        self.sketch.add(acc, value)
    }
    fn merge(&self, acc: &mut Self::Acc, other: &Self::Acc) {
        self.sketch.merge(acc, other)
    }
    fn result(&self, acc: &Self::Acc) -> u64 {
        if acc.histogram.is_empty() {
            return 0;
        }
        acc.histogram.value_at_quantile(self.quantile).min(acc.max)
    }
}
