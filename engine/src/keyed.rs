//! The keyed event-time operator: the primitive windows, joins and process functions are built on.
//!
//! A [`KeyedLogic`] receives the records of the keys its worker owns and is told when the
//! watermark advances; it emits results stamped with an event time. The engine holds a timely
//! capability at the logic's [`KeyedLogic::next_emit_time`], so downstream operators wait for
//! results that are still pending, and lets it go once the logic has nothing pending: state that
//! is freed is no longer holding anything back.

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::ParallelizationContract;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;

use std::sync::Arc;

use crate::metrics::Metrics;
use crate::stream::TStream;
use crate::Data;

/// Keyed logic driven by records and by the watermark.
pub trait KeyedLogic<K, V>: 'static {
    /// What the logic emits.
    type Out: Data;

    /// A record for `key` with event time `ts_ms`, that travelled at watermark `message_time`.
    fn on_record(&mut self, message_time: u64, ts_ms: u64, key: K, value: V);

    /// The watermark has reached `watermark` (`u64::MAX` at the end of the input): no record with
    /// a message time below it will arrive. Push results as `(event time, record)` into `out`.
    fn on_watermark(&mut self, watermark: u64, out: &mut Vec<(u64, Self::Out)>);

    /// The least event time at which the logic may still emit, or `None` when nothing is pending.
    fn next_emit_time(&self) -> Option<u64>;

    /// How many entries of state the logic holds (accumulators, buffered records), for the
    /// `state:STEP` metric. State that is freed must stop counting here.
    fn state_size(&self) -> usize {
        0
    }
}

pub(crate) fn build_keyed<'scope, K: Data, V: Data, L: KeyedLogic<K, V>, P>(
    input: TStream<'scope, (K, V)>,
    pact: P,
    name: &str,
    mut logic: L,
    metrics: Arc<Metrics>,
) -> TStream<'scope, L::Out>
where
    P: ParallelizationContract<u64, Vec<(u64, (K, V))>>,
{
    let local_worker = input.scope().index() % metrics.local_workers().max(1);
    let gauge = format!("state:{name}");
    let mut last_state_size = usize::MAX;
    input.unary_frontier::<CapacityContainerBuilder<Vec<(u64, L::Out)>>, _, _, _>(pact, name, move |_initial, _info| {
        let mut held: Option<Capability<u64>> = None;
        let mut last_watermark = 0u64;
        let mut emitted: Vec<(u64, L::Out)> = Vec::new();
        move |(input, frontier), output| {
            // The least input capability of this activation: it may be earlier than `held`.
            let mut fresh: Option<Capability<u64>> = None;
            input.for_each(|cap, data| {
                let Some(&time) = cap.least() else { return };
                if fresh.as_ref().is_none_or(|c| time < *c.time()) {
                    fresh = cap.retain_least(0);
                }
                for (ts, (key, value)) in data.drain(..) {
                    logic.on_record(time, ts, key, value);
                }
            });
            let watermark = frontier.frontier().first().copied().unwrap_or(u64::MAX);
            if watermark > last_watermark {
                last_watermark = watermark;
                logic.on_watermark(watermark, &mut emitted);
            }
            // The earliest capability we have: results are sent at their event time, or at this
            // capability's time if that is later.
            let base = match (&held, &fresh) {
                (Some(h), Some(f)) => Some(if f.time() < h.time() { f } else { h }),
                (h, f) => h.as_ref().or(f.as_ref()),
            };
            if !emitted.is_empty() {
                let base = base.expect("a keyed operator emitted without any pending capability");
                let base_time = *base.time();
                emitted.sort_by_key(|(ts, _)| *ts);
                let mut results = emitted.drain(..).peekable();
                while let Some(first) = results.next() {
                    let time = first.0.max(base_time);
                    let cap = base.delayed(&time);
                    let mut session = output.session(&cap);
                    session.give(first);
                    while let Some(next) = results.next_if(|(ts, _)| (*ts).max(base_time) == time) {
                        session.give(next);
                    }
                }
            }
            let state_size = logic.state_size();
            if state_size != last_state_size {
                last_state_size = state_size;
                metrics.set_gauge(&gauge, local_worker, state_size as u64);
            }
            held = match logic.next_emit_time() {
                None => None,
                Some(next) => {
                    let least = match (held.take(), fresh.take()) {
                        (Some(h), Some(f)) => Some(if f.time() < h.time() { f } else { h }),
                        (h, f) => h.or(f),
                    };
                    least.map(|mut c| {
                        if next > *c.time() {
                            c.downgrade(&next);
                        }
                        c
                    })
                }
            };
        }
    })
}
