//! The coordinator's view of its running jobs' metrics: every second it reads the metrics endpoint
//! of each job process (`--metrics-addr`, on a port the coordinator gave it), adds the processes up
//! into one [`JobMetrics`] per job, and keeps a short history per job for the dashboard's charts.
//!
//! Counters restart from zero with each attempt (a restarted process counts afresh); rates are
//! therefore taken between two samples of the same attempt only. A scrape that fails leaves the
//! job's last figures in place, with the failure noted.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::client::Client;

/// How often the coordinator reads the job processes' endpoints.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);

/// How long one read of an endpoint may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_millis(800);

/// Samples kept per job: five minutes at one a second.
const HISTORY_SAMPLES: usize = 300;

/// One job's figures, added up over its processes, as of the last scrape.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobMetrics {
    /// When the endpoints were read (ms since the Unix epoch).
    pub at_ms: u64,
    /// The attempt the figures belong to.
    pub attempt: u32,
    /// Events the sources read (this attempt).
    pub events_read: u64,
    /// Events read per second since the previous sample.
    pub events_per_second: f64,
    /// Each step, in the order the job builds them.
    pub steps: Vec<StepMetrics>,
    /// Wall clock minus the least watermark of any process; none before the first watermark.
    pub watermark_lag_ms: Option<u64>,
    /// Times a source paused because its sinks had not taken in what it sent (this attempt).
    pub backpressure_waits: u64,
    /// Such pauses per second since the previous sample.
    pub backpressure_waits_per_second: f64,
    /// Ingestion-to-sink latency of results, when the job measures it (paced runs).
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    /// Checkpoints of this attempt (read from process 0, which completes them).
    pub checkpoints: Option<CheckpointMetrics>,
    /// The endpoints read, `http://HOST:PORT/metrics`, by process.
    pub endpoints: Vec<String>,
    /// Endpoints that could not be read at the last scrape, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scrape_errors: Vec<String>,
}

/// One step's records, summed over workers and processes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    pub step: String,
    pub records_in: u64,
    pub records_out: u64,
    pub records_in_per_second: f64,
    pub records_out_per_second: f64,
}

/// The checkpoint figures of a job's process 0.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMetrics {
    pub completed: u64,
    pub failures: u64,
    pub last_completed_epoch: Option<u64>,
    pub last_duration_ms: Option<f64>,
    pub last_size_bytes: Option<u64>,
}

/// A point of a job's history (`GET /api/jobs/{id}/history`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub at_ms: u64,
    pub events_per_second: f64,
    pub watermark_lag_ms: Option<u64>,
    pub latency_p99_ms: Option<f64>,
    pub backpressure_waits_per_second: f64,
}

/// What the coordinator keeps of one job.
#[derive(Debug, Default)]
pub struct Observed {
    pub latest: Option<JobMetrics>,
    pub history: VecDeque<Sample>,
}

/// One job process to read: its job, attempt, process number and endpoint address.
#[derive(Clone, Debug)]
pub struct Target {
    pub job: String,
    pub attempt: u32,
    pub process: usize,
    pub address: String,
}

/// One sample line of the Prometheus text format.
#[derive(Debug, PartialEq)]
struct Line {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Line {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Reads the sample lines of a Prometheus text page (comments and unreadable lines skipped).
fn parse(text: &str) -> Vec<Line> {
    text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Line> {
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}')?;
            (&line[..open], parse_labels(&line[open + 1..close])?, &line[close + 1..])
        }
        None => {
            let (name, rest) = line.split_once(' ')?;
            (name, Vec::new(), rest)
        }
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Line { name: name.to_string(), labels, value })
}

/// `k="v",k2="v2"`, with `\"`, `\\` and `\n` escapes in values.
fn parse_labels(text: &str) -> Option<Vec<(String, String)>> {
    let mut labels = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(labels);
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if chars.next()? != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.push((key.trim().to_string(), value));
    }
}

/// Adds up the pages of one job's processes (`pages[i]`: the page of process `i`, when read).
fn combine(pages: &[(usize, Vec<Line>)]) -> JobMetrics {
    let mut m = JobMetrics::default();
    let mut steps: Vec<StepMetrics> = Vec::new();
    let mut lag_max: Option<f64> = None;
    for (process, lines) in pages {
        for line in lines {
            let count = line.value.max(0.0) as u64;
            match line.name.as_str() {
                "paystream_events_read_total" => m.events_read += count,
                name @ ("paystream_records_in_total" | "paystream_records_out_total") => {
                    let Some(step) = line.label("step") else { continue };
                    let index = match steps.iter().position(|s| s.step == step) {
                        Some(i) => i,
                        None => {
                            steps.push(StepMetrics { step: step.to_string(), ..Default::default() });
                            steps.len() - 1
                        }
                    };
                    if name == "paystream_records_in_total" {
                        steps[index].records_in += count;
                    } else {
                        steps[index].records_out += count;
                    }
                }
                "paystream_counter_total" if line.label("name").is_some_and(|n| n.starts_with("backpressure_waits:")) => {
                    m.backpressure_waits += count
                }
                // The process whose watermark is furthest behind holds the job's back.
                "paystream_watermark_lag_seconds" => lag_max = Some(lag_max.map_or(line.value, |l: f64| l.max(line.value))),
                "paystream_result_latency_seconds" => {
                    let ms = line.value * 1000.0;
                    match line.label("quantile") {
                        Some("0.5") => m.latency_p50_ms = Some(m.latency_p50_ms.map_or(ms, |l| l.max(ms))),
                        Some("0.99") => m.latency_p99_ms = Some(m.latency_p99_ms.map_or(ms, |l| l.max(ms))),
                        _ => {}
                    }
                }
                name if *process == 0 && name.starts_with("paystream_checkpoint") => {
                    let c = m.checkpoints.get_or_insert_with(CheckpointMetrics::default);
                    match name {
                        "paystream_checkpoints_completed_total" => c.completed = count,
                        "paystream_checkpoint_failures_total" => c.failures = count,
                        "paystream_checkpoint_last_completed_epoch" => c.last_completed_epoch = Some(count),
                        "paystream_checkpoint_last_duration_seconds" => c.last_duration_ms = Some(line.value * 1000.0),
                        "paystream_checkpoint_last_size_bytes" => c.last_size_bytes = Some(count),
                        _ => {}
                    }
                }
                _ => {}
            }
        }
    }
    m.watermark_lag_ms = lag_max.map(|s| (s.max(0.0) * 1000.0) as u64);
    m.steps = steps;
    m
}

/// Rates since `previous` (of the same attempt).
fn add_rates(m: &mut JobMetrics, previous: Option<&JobMetrics>) {
    let Some(previous) = previous.filter(|p| p.attempt == m.attempt && p.at_ms < m.at_ms) else { return };
    let seconds = (m.at_ms - previous.at_ms) as f64 / 1000.0;
    let rate = |now: u64, before: u64| now.saturating_sub(before) as f64 / seconds;
    m.events_per_second = rate(m.events_read, previous.events_read);
    m.backpressure_waits_per_second = rate(m.backpressure_waits, previous.backpressure_waits);
    for step in &mut m.steps {
        if let Some(before) = previous.steps.iter().find(|s| s.step == step.step) {
            step.records_in_per_second = rate(step.records_in, before.records_in);
            step.records_out_per_second = rate(step.records_out, before.records_out);
        }
    }
}

/// What one scrape got of one job: its attempt, the pages read (by process), the endpoints tried
/// and the failures.
type Read = (u32, Vec<(usize, Vec<Line>)>, Vec<String>, Vec<String>);

/// Reads every target's endpoint (all at once) and returns each job's figures.
pub async fn scrape(targets: Vec<Target>) -> BTreeMap<String, JobMetrics> {
    let mut reads = Vec::new();
    for target in targets {
        reads.push(tokio::spawn(async move {
            let url = format!("http://{}", target.address);
            let page = match Client::new(&url, None) {
                Ok(client) => client.get_bytes("/metrics", SCRAPE_TIMEOUT).await,
                Err(e) => Err(e),
            };
            (target, page)
        }));
    }
    let mut by_job: BTreeMap<String, Read> = BTreeMap::new();
    for read in reads {
        let Ok((target, page)) = read.await else { continue };
        let entry = by_job.entry(target.job.clone()).or_insert_with(|| (target.attempt, Vec::new(), Vec::new(), Vec::new()));
        entry.2.push(format!("http://{}/metrics", target.address));
        match page {
            Ok(bytes) => entry.1.push((target.process, parse(&String::from_utf8_lossy(&bytes)))),
            Err(e) => entry.3.push(format!("process {} at {}: {e:#}", target.process, target.address)),
        }
    }
    let now_ms = crate::now_ms();
    by_job
        .into_iter()
        .map(|(job, (attempt, mut pages, endpoints, errors))| {
            pages.sort_by_key(|(process, _)| *process);
            let mut m = combine(&pages);
            m.at_ms = now_ms;
            m.attempt = attempt;
            m.endpoints = endpoints;
            m.scrape_errors = errors;
            (job, m)
        })
        .collect()
}

impl Observed {
    /// Takes the figures of a new scrape: rates against the last, and a point of history. A scrape
    /// that read no endpoint at all keeps the last figures (with its errors).
    pub fn record(&mut self, mut m: JobMetrics) {
        let read_none = !m.scrape_errors.is_empty() && m.scrape_errors.len() == m.endpoints.len();
        if read_none {
            if let Some(latest) = self.latest.as_mut().filter(|l| l.attempt == m.attempt) {
                latest.scrape_errors = m.scrape_errors;
                return;
            }
        }
        add_rates(&mut m, self.latest.as_ref());
        if !read_none {
            self.history.push_back(Sample {
                at_ms: m.at_ms,
                events_per_second: m.events_per_second,
                watermark_lag_ms: m.watermark_lag_ms,
                latency_p99_ms: m.latency_p99_ms,
                backpressure_waits_per_second: m.backpressure_waits_per_second,
            });
            while self.history.len() > HISTORY_SAMPLES {
                self.history.pop_front();
            }
        }
        self.latest = Some(m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP paystream_records_in Records a step received, per worker.
# TYPE paystream_records_in counter
paystream_records_in_total{job="j",step="parse",worker="0"} 10
paystream_records_in_total{job="j",step="parse",worker="1"} 5
paystream_records_out_total{job="j",step="parse",worker="0"} 9
paystream_events_read_total{job="j"} 15
paystream_counter_total{job="j",name="backpressure_waits:pay\"ments",worker="0"} 3
paystream_watermark_lag_seconds{job="j"} 1.5
paystream_checkpoints_completed_total{job="j"} 4
paystream_checkpoint_last_size_bytes{job="j"} 2048
paystream_result_latency_seconds{job="j",quantile="0.99"} 0.25
"#;

    #[test]
    fn parses_labels_with_escapes() {
        let lines = parse(PAGE);
        assert_eq!(lines.len(), 9);
        assert_eq!(lines[4].label("name"), Some("backpressure_waits:pay\"ments"));
        assert_eq!(lines[0].value, 10.0);
        assert_eq!(parse_line("up 1").map(|l| l.value), Some(1.0));
    }

    #[test]
    fn adds_processes_up_and_takes_rates_within_an_attempt() {
        let page = parse(PAGE);
        let mut second = parse(PAGE);
        second.retain(|l| !l.name.starts_with("paystream_checkpoint"));
        let mut m = combine(&[(0, page), (1, second)]);
        assert_eq!(m.steps.len(), 1);
        assert_eq!((m.steps[0].records_in, m.steps[0].records_out), (30, 18));
        assert_eq!(m.events_read, 30);
        assert_eq!(m.backpressure_waits, 6);
        assert_eq!(m.watermark_lag_ms, Some(1500));
        assert_eq!(m.latency_p99_ms, Some(250.0));
        let c = m.checkpoints.clone().unwrap();
        assert_eq!((c.completed, c.last_size_bytes), (4, Some(2048)));
        m.at_ms = 1000;
        let mut later = m.clone();
        later.at_ms = 3000;
        later.events_read += 100;
        later.steps[0].records_in += 50;
        let mut observed = Observed::default();
        observed.record(m.clone());
        observed.record(later.clone());
        let latest = observed.latest.as_ref().unwrap();
        assert_eq!(latest.events_per_second, 50.0);
        assert_eq!(latest.steps[0].records_in_per_second, 25.0);
        assert_eq!(observed.history.len(), 2);
        // A new attempt counts from zero: no rate against the old one.
        let mut restarted = m;
        restarted.attempt = 2;
        restarted.at_ms = 4000;
        observed.record(restarted);
        assert_eq!(observed.latest.as_ref().unwrap().events_per_second, 0.0);
    }
}
