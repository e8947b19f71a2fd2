//! Flow control between the sinks and the sources of one worker's dataflow: shared by the
//! source operator ([`crate::source`]), which waits, and the sink operator ([`crate::sink`]),
//! which wakes it. A leaf: it names only [`crate::time`]. Re-exported from [`crate::source`].

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
/// A waiting source is woken as soon as a sink's input frontier moves (`FlowControl::wake`), not
/// after a fixed delay: with one worker, a source that looks again later leaves the worker parked
/// while the work it waits for is already done, and looking again often spends CPU on nothing
/// (figures in BENCHMARKS.md, "Figures behind choices in the code").
#[derive(Clone)]
pub struct FlowControl {
    pub(crate) probe: timely::dataflow::operators::probe::Handle<Time>,
    /// Batches a source worker may have in flight; 0: no limit.
    pub(crate) max_in_flight: usize,
    /// The sources of this worker waiting for the probe to move.
    waiting: std::rc::Rc<std::cell::RefCell<Vec<timely::scheduling::Activator>>>,
}

impl FlowControl {
    pub(crate) fn new(max_in_flight: usize) -> Self {
        FlowControl { probe: Default::default(), max_in_flight, waiting: Default::default() }
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

    /// Drops the batches that have landed; returns the records still in flight (not counting
    /// those sent at `current`), or `None` without flow control.
    pub(crate) fn waiting(&self, in_flight: &mut std::collections::VecDeque<(Time, usize)>, current: &Time) -> Option<usize> {
        if self.max_in_flight == 0 {
            in_flight.clear();
            return None;
        }
        while in_flight.front().is_some_and(|(t, _)| !self.probe.less_equal(t)) {
            in_flight.pop_front();
        }
        Some(in_flight.iter().filter(|(t, _)| t != current).map(|(_, n)| n).sum())
    }
}
