//! What `/metrics` shows: a Prometheus collector that reads the run's counters at each scrape.
//!
//! Nothing here runs on a worker's hot path: workers bump their own counters
//! ([`crate::metrics::WorkerCounter`]), and a scrape reads them all, names them in Prometheus
//! style and labels them with the job, the step and the worker. The names, one family each:
//! see [`FAMILIES`] and the table in README.md.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::checkpoint::CommitState;
use crate::metrics::Metrics;

/// Every metric family the exporter may show: name (counters get `_total` appended on the wire),
/// type, labels, and help. README.md has the same table.
pub const FAMILIES: &[(&str, MetricType, &str, &str)] = &[
    ("paystream_events_read", MetricType::Counter, "job", "Events read by this process's sources."),
    ("paystream_records_in", MetricType::Counter, "job,step,worker", "Records a step received, per worker."),
    ("paystream_records_out", MetricType::Counter, "job,step,worker", "Records a step emitted, per worker."),
    ("paystream_late_dropped", MetricType::Counter, "job,step,worker", "Late records a step dropped, per worker."),
    ("paystream_late_side_output", MetricType::Counter, "job,step,worker", "Late records a step sent to its late side output."),
    ("paystream_dead_letters", MetricType::Counter, "job", "Records that could not be read, sent to the dead_letters sink."),
    ("paystream_state_entries", MetricType::Gauge, "job,step,worker", "Entries of keyed state a step holds, per worker."),
    ("paystream_sink_records_written", MetricType::Counter, "job,sink", "Records a sink wrote."),
    ("paystream_sink_errors", MetricType::Counter, "job,sink", "Write errors of a sink."),
    ("paystream_counter", MetricType::Counter, "job,name[,worker]", "Other named counts of the job's steps."),
    ("paystream_gauge", MetricType::Gauge, "job,name,worker", "Other named levels of the job's steps."),
    (
        "paystream_watermark_seconds",
        MetricType::Gauge,
        "job",
        "The least source watermark of this process (event time, seconds since the Unix epoch).",
    ),
    ("paystream_watermark_lag_seconds", MetricType::Gauge, "job", "Wall clock minus the watermark."),
    ("paystream_source_split_position", MetricType::Gauge, "job,source,split,worker", "Where a source split is read from next."),
    ("paystream_source_split_backlog", MetricType::Gauge, "job,source,split,worker", "What is left to read in a source split."),
    ("paystream_checkpoint_last_completed_epoch", MetricType::Gauge, "job", "Epoch of the newest complete checkpoint."),
    ("paystream_checkpoint_last_duration_seconds", MetricType::Gauge, "job", "From the first part to the manifest, last checkpoint."),
    ("paystream_checkpoint_last_size_bytes", MetricType::Gauge, "job", "Bytes of the last complete checkpoint."),
    ("paystream_checkpoints_completed", MetricType::Counter, "job", "Checkpoints this run completed."),
    ("paystream_checkpoint_failures", MetricType::Counter, "job", "Failed attempts to complete a checkpoint."),
    ("paystream_result_latency_seconds", MetricType::Gauge, "job,quantile", "Ingestion-to-sink latency of results (when measured)."),
    ("paystream_result_latency_results", MetricType::Counter, "job", "Results whose latency was measured."),
];

/// The collector of one run in one process.
#[derive(Debug)]
pub struct RunCollector {
    job: String,
    /// The index of this process's first worker among all workers.
    first_worker: usize,
    metrics: Arc<Metrics>,
    /// The coordinator's progress (process 0 of a checkpointing run).
    commit: Option<Arc<CommitState>>,
}

impl RunCollector {
    /// Reads `metrics` (and `commit`, for checkpoints) of job `job` in process `process`.
    pub fn new(job: &str, process: usize, metrics: Arc<Metrics>, commit: Option<Arc<CommitState>>) -> Self {
        let first_worker = process * metrics.local_workers();
        RunCollector { job: job.to_string(), first_worker, metrics, commit }
    }

    /// A registry holding this collector alone.
    pub fn into_registry(self) -> Registry {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        registry
    }

    fn rows(&self) -> Vec<Row> {
        let m = &self.metrics;
        let job = || ("job", self.job.clone());
        let mut rows = vec![Row::count("paystream_events_read", vec![job()], m.events_read())];
        for c in m.step_counts() {
            let labels = vec![job(), ("step", c.step.clone()), ("worker", c.worker.to_string())];
            rows.push(Row::count("paystream_records_in", labels.clone(), c.records_in));
            rows.push(Row::count("paystream_records_out", labels, c.records_out));
        }
        for (name, worker, n) in m.worker_counts() {
            let (family, key, value) = match name.split_once(':') {
                Some(("late_dropped", step)) => ("paystream_late_dropped", "step", step.to_string()),
                Some(("late_side_output", step)) => ("paystream_late_side_output", "step", step.to_string()),
                _ => ("paystream_counter", "name", name.clone()),
            };
            rows.push(Row::count(family, vec![job(), (key, value), ("worker", worker.to_string())], n));
        }
        for (name, n) in m.shared_counters() {
            let (family, key, value) = match name.split_once(':') {
                Some(("written", sink)) => ("paystream_sink_records_written", "sink", sink.to_string()),
                Some(("sink_errors", sink)) => ("paystream_sink_errors", "sink", sink.to_string()),
                _ if name == "dead_lettered" => {
                    rows.push(Row::count("paystream_dead_letters", vec![job()], n));
                    continue;
                }
                _ => ("paystream_counter", "name", name.clone()),
            };
            rows.push(Row::count(family, vec![job(), (key, value)], n));
        }
        if !m.shared_counters().contains_key("dead_lettered") {
            rows.push(Row::count("paystream_dead_letters", vec![job()], 0));
        }
        for (name, levels) in m.gauge_levels() {
            let (family, key, value) = match name.split_once(':') {
                Some(("state", step)) => ("paystream_state_entries", "step", step.to_string()),
                _ => ("paystream_gauge", "name", name.clone()),
            };
            for (local, level) in levels.into_iter().enumerate() {
                let labels = vec![job(), (key, value.clone()), ("worker", (self.first_worker + local).to_string())];
                rows.push(Row::level(family, labels, level as f64));
            }
        }
        let watermark = m.watermark();
        if watermark != u64::MAX {
            rows.push(Row::level("paystream_watermark_seconds", vec![job()], watermark as f64 / 1000.0));
            if watermark > 0 {
                let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
                let lag_ms = now_ms as f64 - watermark as f64;
                rows.push(Row::level("paystream_watermark_lag_seconds", vec![job()], lag_ms / 1000.0));
            }
        }
        for s in m.split_levels() {
            let labels = vec![job(), ("source", s.source.clone()), ("split", s.split.clone()), ("worker", s.worker.to_string())];
            if let Some(p) = s.position {
                rows.push(Row::level("paystream_source_split_position", labels.clone(), p as f64));
            }
            if let Some(b) = s.backlog {
                rows.push(Row::level("paystream_source_split_backlog", labels, b as f64));
            }
        }
        if let Some(commit) = &self.commit {
            let f = commit.stats.figures();
            if let Some(epoch) = commit.committed() {
                rows.push(Row::level("paystream_checkpoint_last_completed_epoch", vec![job()], epoch as f64));
            }
            if f.completed > 0 {
                rows.push(Row::level("paystream_checkpoint_last_duration_seconds", vec![job()], f.last_duration.as_secs_f64()));
                rows.push(Row::level("paystream_checkpoint_last_size_bytes", vec![job()], f.last_size_bytes as f64));
            }
            rows.push(Row::count("paystream_checkpoints_completed", vec![job()], f.completed));
            rows.push(Row::count("paystream_checkpoint_failures", vec![job()], f.failures));
        }
        if let Some(clock) = m.latency() {
            let l = crate::latency::LatencySummary::of(&clock.histogram());
            rows.push(Row::count("paystream_result_latency_results", vec![job()], l.count));
            if l.count > 0 {
                for (q, us) in [("0.5", l.p50), ("0.99", l.p99), ("0.999", l.p999), ("1", l.max)] {
                    rows.push(Row::level("paystream_result_latency_seconds", vec![job(), ("quantile", q.to_string())], us as f64 / 1e6));
                }
            }
        }
        rows
    }
}

/// One sample: its family, labels and value.
struct Row {
    family: &'static str,
    labels: Vec<(&'static str, String)>,
    value: Value,
}

enum Value {
    Count(u64),
    Level(f64),
}

impl Row {
    fn count(family: &'static str, labels: Vec<(&'static str, String)>, n: u64) -> Row {
        Row { family, labels, value: Value::Count(n) }
    }
    fn level(family: &'static str, labels: Vec<(&'static str, String)>, x: f64) -> Row {
        Row { family, labels, value: Value::Level(x) }
    }
}

fn help(family: &str) -> &'static str {
    FAMILIES.iter().find(|f| f.0 == family).map_or("", |f| f.3)
}

impl Collector for RunCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut rows = self.rows();
        // One descriptor per family, its samples after it.
        rows.sort_by_key(|r| r.family);
        for family in rows.chunk_by(|a, b| a.family == b.family) {
            let kind = match family[0].value {
                Value::Count(_) => MetricType::Counter,
                Value::Level(_) => MetricType::Gauge,
            };
            let mut metric = encoder.encode_descriptor(family[0].family, help(family[0].family), None, kind)?;
            for row in family {
                let mut sample = metric.encode_family(&row.labels)?;
                match row.value {
                    Value::Count(n) => sample.encode_counter::<NoLabelSet, _, u64>(&n, None)?,
                    Value::Level(x) => sample.encode_gauge(&x)?,
                }
            }
        }
        Ok(())
    }
}

/// The registry's metrics in the Prometheus text format (version 0.0.4).
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_and_labelled_in_prometheus_style() {
        let m = Arc::new(Metrics::new(2));
        m.step_records("velocity", 3).input.add(5);
        m.worker_counter("late_dropped:velocity", 2).add(1);
        m.add("written:alerts", 9);
        m.add("dead_lettered", 2);
        m.set_gauge("state:velocity", 1, 4);
        m.set_watermark(0, 1_700_000_000_000);
        m.set_watermark(1, 1_700_000_001_000);
        m.set_split_position("payments", "0", 2, 77);
        let text = render(&RunCollector::new("card-velocity", 1, m, None).into_registry());
        for line in [
            r#"paystream_records_in_total{job="card-velocity",step="velocity",worker="3"} 5"#,
            r#"paystream_records_out_total{job="card-velocity",step="velocity",worker="3"} 0"#,
            r#"paystream_late_dropped_total{job="card-velocity",step="velocity",worker="2"} 1"#,
            r#"paystream_sink_records_written_total{job="card-velocity",sink="alerts"} 9"#,
            r#"paystream_dead_letters_total{job="card-velocity"} 2"#,
            r#"paystream_state_entries{job="card-velocity",step="velocity",worker="3"} 4"#,
            r#"paystream_watermark_seconds{job="card-velocity"} 1700000000"#,
            r#"paystream_source_split_position{job="card-velocity",source="payments",split="0",worker="2"} 77"#,
            "# TYPE paystream_records_in_total counter",
            "# TYPE paystream_watermark_seconds gauge",
        ] {
            assert!(text.lines().any(|l| l.starts_with(line)), "no {line:?} in:\n{text}");
        }
        assert_eq!(text.matches("# TYPE paystream_records_in_total").count(), 1, "{text}");
        for family in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
            let name = family.split(' ').next().unwrap_or_default();
            let base = name.strip_suffix("_total").unwrap_or(name);
            assert!(FAMILIES.iter().any(|f| f.0 == base), "{name} is not in FAMILIES (nor README.md)");
        }
    }

    #[test]
    fn every_family_is_documented_in_the_readme() {
        let readme = include_str!("../../../README.md");
        for (name, kind, _, _) in FAMILIES {
            let wire = if matches!(kind, MetricType::Counter) { format!("`{name}_total`") } else { format!("`{name}`") };
            assert!(readme.contains(&wire), "README.md's metrics table lacks {wire}");
        }
    }
}
