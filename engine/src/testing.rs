//! Running streams over in-memory input, for tests and doctests of operators.
//!
//! What is here and when it is built:
//!
//! * [`run_partitions`] and [`run_collect`], the in-memory runner, are always built: they are
//!   public API (the facade re-exports this module as `paystream::local`), examples and doctests
//!   call them to try an operator out, and they cost production nothing but their code.
//! * `Rng` (a seeded generator of test inputs) and `mutate_json_line` (a fuzzer of JSON lines)
//!   serve only tests and benchmarks, so they are built only for this crate's own tests or with
//!   the `testing` cargo feature. The workspace's crates turn the feature on in their
//!   `[dev-dependencies]`, which production builds do not use; the facade forwards it as its own
//!   `testing` feature for users who want the generator in their tests.

use std::sync::{Arc, Mutex};

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;

use crate::job::{JobSpec, Params, RunPlan};
use crate::metrics::Metrics;
use crate::source::{build_partitioned_source, Partition, VecPartition};
use crate::stream::Stream;
use crate::time::OutOfOrder;
use crate::Data;

fn test_plan() -> RunPlan {
    const SPEC: JobSpec = JobSpec { name: "test", about: "", sources: &[], sinks: &[], params: &[], build: |_, _| Ok(()) };
    RunPlan {
        spec: SPEC,
        params: Params::default(),
        sources: Default::default(),
        sinks: Default::default(),
        connectors: Default::default(),
    }
}

/// Runs `build` on `workers` threads over `partitions` of records (partition `p` read by worker
/// `p % workers`, in order, with the real source's watermark logic) and returns what the built
/// stream emitted as `(event time, record)`, sorted by event time and then by the record's debug
/// form (a canonical order, whatever the threads did), with this process's counters and, at the
/// end of the run, its gauges (`state:STEP`: state entries each stateful step still holds).
pub fn run_partitions<T, U, F>(
    workers: usize,
    partitions: Vec<Vec<T>>,
    event_time: fn(&T) -> u64,
    strategy: OutOfOrder,
    build: F,
) -> (Vec<(u64, U)>, std::collections::BTreeMap<String, u64>)
where
    T: Data + Sync,
    U: Data,
    F: for<'s> Fn(Stream<'s, T>) -> Stream<'s, U> + Send + Sync + 'static,
{
    let partitions = Arc::new(partitions);
    let collected = Arc::new(Mutex::new(Vec::new()));
    let metrics = Arc::new(Metrics::new(workers));
    let plan = Arc::new(test_plan());
    let (out, m) = (collected.clone(), metrics.clone());
    timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let mine: Vec<crate::source::Indexed<T>> = partitions
            .iter()
            .enumerate()
            .filter(|(p, _)| p % peers == index)
            .map(|(p, records)| (p as u64, Box::new(VecPartition { records: records.clone(), next: 0 }) as Box<dyn Partition<T>>))
            .collect();
        let out = out.clone();
        let ctx = std::rc::Rc::new(plan.build_context(m.clone(), false));
        worker.dataflow::<crate::time::Time, _, _>(|scope| {
            let (records, _dead) = build_partitioned_source(scope, &ctx, "input", mine, event_time, |r: &T| format!("{r:?}"), strategy)
                .expect("in-memory partitions start");
            let built = build(Stream::from_parts(records, ctx.clone()));
            built.inner.sink(Pipeline, "collect", move |(input, _)| {
                input.for_each(|_, data| out.lock().unwrap().extend(data.drain(..)));
            });
        });
    })
    .expect("timely starts")
    .join()
    .into_iter()
    .for_each(|r| r.expect("worker ran"));
    let mut results = std::mem::take(&mut *collected.lock().unwrap());
    // A canonical order that needs no `Ord` on the records: event time, then the debug form.
    results.sort_by_cached_key(|(ts, x)| (*ts, format!("{x:?}")));
    let mut counters = metrics.counters();
    counters.extend(metrics.gauges());
    (results, counters)
}

/// Runs `build` on one worker over `records` given as `(event time, record)`, in order and with no
/// disorder allowed, and returns the output sorted.
pub fn run_collect<T, U, F>(records: Vec<(u64, T)>, build: F) -> Vec<(u64, U)>
where
    T: Data + Sync,
    U: Data,
    F: for<'s> Fn(Stream<'s, T>) -> Stream<'s, U> + Send + Sync + 'static,
{
    let (out, _) = run_partitions(1, vec![records], |(ts, _)| *ts, OutOfOrder::ordered(), move |s| build(s.map("strip-time", |(_, x)| x)));
    out
}

/// Changes a JSON line the way a broken or hand-written file might: bytes with a meaning in JSON
/// inserted, deleted or replaced, white space, escapes, keys moved, doubled or unknown. For tests
/// of decoders' fast paths against serde_json; `below(n)` draws a number below `n` (a seeded
/// generator, so that failures reproduce). Only with the `testing` feature (see the module doc).
#[cfg(any(test, feature = "testing"))]
pub fn mutate_json_line(line: &str, below: &mut impl FnMut(usize) -> usize) -> String {
    const PIECES: &[&str] = &[
        "\"",
        "\\",
        ",",
        ":",
        "{",
        "}",
        "[",
        "]",
        " ",
        "\t",
        "0",
        "-",
        "1",
        "9",
        "e",
        ".",
        "n",
        "null",
        "true",
        "\u{1}",
        "é",
        "\\u0041",
        "\\\"",
        "-0",
        "00",
        "1e2",
        "\"SALE\"",
        "\"APPROVED\"",
        "\"x\":1,",
        "\"ts_ms\":5,",
        "{}",
        "[]",
        "18446744073709551616",
        "9999999999999999999",
        "-999999999999999999",
        "-9999999999999999999",
        "1.5",
        "\u{1f}",
        "\u{7f}",
        "€",
        "\"é€ long enough to cross words\"",
        ":{\"a\":[1,\"b\"]}",
        " :",
        "\r",
    ];
    let mut chars: Vec<char> = line.chars().collect();
    for _ in 0..1 + below(3) {
        let at = below(chars.len() + 1);
        match below(5) {
            0 | 1 => {
                let piece: Vec<char> = PIECES[below(PIECES.len())].chars().collect();
                chars.splice(at..at, piece);
            }
            2 if at < chars.len() => {
                chars.remove(at);
            }
            3 if at < chars.len() => {
                let piece: Vec<char> = PIECES[below(PIECES.len())].chars().collect();
                chars.splice(at..at + 1, piece);
            }
            _ => {
                // Swap two fields, or repeat one.
                let text: String = chars.iter().collect();
                let inner = text.trim_start_matches('{').trim_end_matches('}');
                let fields: Vec<&str> = inner.split(",\"").collect();
                if fields.len() > 2 {
                    let (i, j) = (1 + below(fields.len() - 1), 1 + below(fields.len() - 1));
                    let mut fields: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
                    if below(2) == 0 {
                        fields.swap(i, j);
                    } else {
                        let copy = fields[i].clone();
                        fields.insert(j, copy);
                    }
                    chars = format!("{{{}}}", fields.join(",\"")).chars().collect();
                }
            }
        }
    }
    chars.into_iter().collect()
}

/// SplitMix64: a small deterministic generator of test inputs, so that failures reproduce.
/// Only with the `testing` feature (see the module doc).
#[cfg(any(test, feature = "testing"))]
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

#[cfg(any(test, feature = "testing"))]
impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Below `n` (which must be positive).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// In `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi, "an empty range {lo}..={hi}");
        match hi - lo {
            u64::MAX => self.next_u64(),
            span => lo + self.below(span + 1),
        }
    }

    /// True with a chance of `percent` in 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// A uniform fraction in `[low, high)`.
    pub fn fraction(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    }

    /// One of `items` (which must not be empty).
    pub fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize].clone()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use timely::dataflow::channels::pact::Pipeline;
    use timely::dataflow::operators::generic::Operator;

    use super::test_plan;
    use crate::metrics::Metrics;
    use crate::record::DeadLetter;
    use crate::source::{build_partitioned_source, Partition, Position, ReadStatus};
    use crate::time::{OutOfOrder, Time};
    use crate::Result;

    /// A split like a polled table: one record at 100 ms, then nothing for `reads` reads, while
    /// it declares that everything before 10 s has been handed over; then it ends.
    struct QuietTable {
        reads: Arc<AtomicU64>,
        limit: u64,
        sent: bool,
    }

    impl Partition<u64> for QuietTable {
        fn read(&mut self, _max: usize, out: &mut Vec<(u64, u64)>, _dead: &mut Vec<DeadLetter>) -> ReadStatus {
            let n = self.reads.fetch_add(1, Ordering::SeqCst) + 1;
            if !self.sent {
                self.sent = true;
                out.push((0, 100));
                return ReadStatus::More;
            }
            if n >= self.limit {
                ReadStatus::Done
            } else {
                ReadStatus::Idle
            }
        }
        fn position(&self) -> Position {
            Position::default()
        }
        fn seek(&mut self, _position: &Position) -> Result<()> {
            Ok(())
        }
        fn complete_before(&self) -> Option<u64> {
            self.sent.then_some(10_000)
        }
    }

    /// The reads of the split when the frontier downstream first passed 10 s while the split
    /// was still live (`None`: only when it ended).
    fn watermark_passed_at(declares: bool) -> Option<u64> {
        let reads = Arc::new(AtomicU64::new(0));
        let passed: Arc<Mutex<Option<u64>>> = Arc::new(Mutex::new(None));
        let (r, p) = (reads.clone(), passed.clone());
        let plan = Arc::new(test_plan());
        timely::execute(timely::Config::process(1), move |worker| {
            let split = QuietTable { reads: r.clone(), limit: 200, sent: false };
            let split: Box<dyn Partition<u64>> = if declares { Box::new(split) } else { Box::new(Undeclared(split)) };
            let ctx = std::rc::Rc::new(plan.build_context(Arc::new(Metrics::new(1)), false));
            let (r, p) = (r.clone(), p.clone());
            worker.dataflow::<Time, _, _>(|scope| {
                let (records, _dead) = build_partitioned_source(
                    scope,
                    &ctx,
                    "table",
                    vec![(0, split)],
                    |ts: &u64| *ts,
                    |r| format!("{r}"),
                    OutOfOrder::millis(50),
                )
                .expect("the split starts");
                records.sink(Pipeline, "observe", move |(input, frontier)| {
                    input.for_each(|_, _| {});
                    let f = frontier.frontier();
                    let mut passed = p.lock().unwrap_or_else(|e| e.into_inner());
                    if passed.is_none() && !f.is_empty() && f.iter().all(|t| t.wm >= 10_000) {
                        *passed = Some(r.load(Ordering::SeqCst));
                    }
                });
            });
        })
        .expect("timely starts")
        .join()
        .into_iter()
        .for_each(|r| r.expect("worker ran"));
        let at = *passed.lock().unwrap_or_else(|e| e.into_inner());
        at
    }

    /// The same split without the declaration.
    struct Undeclared(QuietTable);

    impl Partition<u64> for Undeclared {
        fn read(&mut self, max: usize, out: &mut Vec<(u64, u64)>, dead: &mut Vec<DeadLetter>) -> ReadStatus {
            self.0.read(max, out, dead)
        }
        fn position(&self) -> Position {
            Position::default()
        }
        fn seek(&mut self, _position: &Position) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_split_that_declares_what_it_handed_over_moves_the_watermark_while_quiet() {
        let at = watermark_passed_at(true).expect("the watermark passed 10 s while the split was live");
        assert!(at < 100, "it passed after {at} of 200 reads");
        assert_eq!(watermark_passed_at(false), None, "without the declaration, a quiet split holds the watermark until it ends");
    }
}
