//! [`AllMax`]: the aggregate behind q5 and q7, every record that ties for the largest value.

use std::marker::PhantomData;

use paystream_engine::Data;
use paystream_operators::Aggregate;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Keeps every record whose `value` is the largest seen, ties included (Nexmark's "the bid with
/// the highest price" and "the auction with the most bids" keep all that tie).
///
/// ```
/// use paystream_jobs::nexmark::all_max::AllMax;
/// use paystream_operators::Aggregate;
/// let most = AllMax::by(|x: &(char, u64)| x.1);
/// let mut acc = most.init();
/// for x in [('a', 3), ('b', 5), ('c', 5), ('d', 1)] {
///     most.add(&mut acc, &x);
/// }
/// assert_eq!(most.result(&acc), vec![('b', 5), ('c', 5)]);
/// ```
pub struct AllMax<V, F: Fn(&V) -> u64> {
    value: F,
    _v: PhantomData<fn(&V)>,
}

impl<V, F: Fn(&V) -> u64> AllMax<V, F> {
    /// The records with the largest `value`.
    pub fn by(value: F) -> Self {
        AllMax { value, _v: PhantomData }
    }
}

impl<V, F> Aggregate<V> for AllMax<V, F>
where
    V: Data + Serialize + DeserializeOwned,
    F: Fn(&V) -> u64 + 'static,
{
    /// The largest value and the records that have it; `None` before the first record.
    type Acc = Option<(u64, Vec<V>)>;
    type Out = Vec<V>;

    fn init(&self) -> Self::Acc {
        None
    }

    fn add(&self, acc: &mut Self::Acc, record: &V) {
        let value = (self.value)(record);
        match acc {
            Some((max, records)) if value == *max => records.push(record.clone()),
            Some((max, _)) if value < *max => {}
            _ => *acc = Some((value, vec![record.clone()])),
        }
    }

    fn merge(&self, acc: &mut Self::Acc, other: &Self::Acc) {
        if let Some((value, records)) = other {
            match acc {
                Some((max, mine)) if value == max => mine.extend(records.iter().cloned()),
                Some((max, _)) if value < max => {}
                _ => *acc = other.clone(),
            }
        }
    }

    fn result(&self, acc: &Self::Acc) -> Self::Out {
        acc.as_ref().map(|(_, records)| records.clone()).unwrap_or_default()
    }
}
