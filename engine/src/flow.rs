//! Flow control between the sinks and the sources of one worker's dataflow: shared by the
//! source operator ([`crate::source`]), which waits, and the sink operator ([`crate::sink`]),
//! which wakes it. A leaf: it names only [`crate::time`]. Re-exported from [`crate::source`].

use std::collections::VecDeque;

use timely::dataflow::operators::probe::Handle;

use crate::time::Time;

/// Flow control: sources wait rather than read far ahead of what the sinks have taken in.
///
/// Every sink's input frontier is mirrored into one probe per worker. A record a source sent at
/// timestamp `t` is *in flight* until the probe's frontier has passed `t`, that is until it, and
/// everything derived from it, has reached every sink (timely's progress tracking counts messages
/// still queued in channels, including those on their way to another worker). A source worker with
/// `max_in_flight` batches ([`BATCH`](crate::source::BATCH) records each) in flight reads nothing
/// until some land, so a slow sink, a slow worker or a hot key makes the sources wait instead of
/// filling channels, and sources on different workers stay within a few batches of each other
/// (watermark alignment), which bounds what joins buffer for the side that is ahead.
///
/// Records sent at the source's current timestamp do not count: they cannot land before the source
/// moves on. Input whose watermark never advances (every record with the same event time) is
/// therefore not bounded by this mechanism.
///
/// Dead letters count as records do, against a probe of their own: the dead-letter sink's input
/// frontier. They travel at a time of their own too, which follows the watermark and also moves on
/// after as many dead letters as records move the watermark, so those of input whose every line
/// is bad (which moves no watermark) land and are bounded like any output (see the source
/// operator's `DeadLetterTime`).
///
/// A waiting source is woken as soon as a sink's input frontier moves (`FlowControl::wake`), not
/// after a fixed delay: with one worker, a source that looks again later leaves the worker parked
/// while the work it waits for is already done, and looking again often spends CPU on nothing
/// (figures in BENCHMARKS.md, "Figures behind choices in the code").
#[derive(Clone)]
pub struct FlowControl {
    pub(crate) probe: Handle<Time>,
    /// The dead-letter sink's input frontier alone: dead letters can land while the watermark,
    /// and so `probe`, stands still.
    pub(crate) dead_letters_probe: Handle<Time>,
    /// Batches a source worker may have in flight; 0: no limit.
    pub(crate) max_in_flight: usize,
    /// The sources of this worker waiting for the probe to move.
    waiting: std::rc::Rc<std::cell::RefCell<Vec<timely::scheduling::Activator>>>,
}

impl FlowControl {
    pub(crate) fn new(max_in_flight: usize) -> Self {
        FlowControl { probe: Default::default(), dead_letters_probe: Default::default(), max_in_flight, waiting: Default::default() }
    }

    /// Wakes the waiting sources: a sink's input frontier has moved.
    pub(crate) fn wake(&self) {
        for activator in self.waiting.borrow_mut().drain(..) {
            activator.activate();
        }
    }

    /// Has `activator` woken at the next move of a sink's frontier.
    pub(crate) fn wait(&self, activator: &timely::scheduling::Activator) {
        self.waiting.borrow_mut().push(activator.clone());
    }

    /// Drops the batches that have landed; returns the records and dead letters still in flight
    /// (not counting those sent at the source's current times: `records_at`, `dead_letters_at`),
    /// or `None` without flow control.
    pub(crate) fn waiting(&self, in_flight: &mut InFlight, records_at: &Time, dead_letters_at: &Time) -> Option<usize> {
        if self.max_in_flight == 0 {
            in_flight.records.clear();
            in_flight.dead_letters.clear();
            return None;
        }
        let records = still_in_flight(&self.probe, &mut in_flight.records, records_at);
        Some(records + still_in_flight(&self.dead_letters_probe, &mut in_flight.dead_letters, dead_letters_at))
    }
}

/// What a source worker sent and has not seen land yet: how many records, and how many dead
/// letters, at each time, oldest first.
#[derive(Default)]
pub(crate) struct InFlight {
    records: VecDeque<(Time, usize)>,
    dead_letters: VecDeque<(Time, usize)>,
}

impl InFlight {
    /// `n` records were sent at `time`.
    pub(crate) fn records(&mut self, time: Time, n: usize) {
        add(&mut self.records, time, n);
    }

    /// `n` dead letters were sent at `time`.
    pub(crate) fn dead_letters(&mut self, time: Time, n: usize) {
        add(&mut self.dead_letters, time, n);
    }
}

fn add(batches: &mut VecDeque<(Time, usize)>, time: Time, n: usize) {
    match batches.back_mut() {
        Some((last, count)) if *last == time => *count += n,
        _ => batches.push_back((time, n)),
    }
}

/// Drops the batches `probe` has passed; returns how many are left, not counting those at `current`.
fn still_in_flight(probe: &Handle<Time>, batches: &mut VecDeque<(Time, usize)>, current: &Time) -> usize {
    while batches.front().is_some_and(|(t, _)| !probe.less_equal(t)) {
        batches.pop_front();
    }
    batches.iter().filter(|(t, _)| t != current).map(|(_, n)| n).sum()
}
