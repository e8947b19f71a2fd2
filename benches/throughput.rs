//! Throughput of `throughput-windows` and `card-velocity` on generated payments, each against a
//! hand-written single-threaded loop over the same events, measured in the same run.
//!
//! Each loop computes exactly what its job computes and writes the same CSV lines (unsorted: it
//! has no workers to be deterministic across); after the timed runs the bench checks that the
//! loop's file and the job's file hold the same lines (count and an order-independent checksum),
//! so the comparison is between equal work. Both use the same generator, whose cost is part of
//! both sides, and the same allocator (mimalloc, as the `paystream` binary).
//!
//! `cargo bench --bench throughput` (release profile). Environment: `EVENTS` (default 2000000),
//! `RUNS` (default 3; medians are reported, and the engine/loop ratios are the medians of the
//! ratios within each round: the loop and every variant run once per round, interleaved), `JOBS` (comma-separated job names, default both),
//! `LOOP_ONLY=1` (run only the loops: for profiling them).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use paystream::engine::checkpoint::CheckpointConfig;
use paystream::engine::job::RunPlan;
use paystream::engine::keygroup::stable_hash;
use paystream::engine::runtime::{run, RunOptions};
use paystream::engine::source::GenOptions;
use paystream::engine::{CsvRecord, Generate};
use paystream::jobs::throughput::MerchantWindow;
use paystream::jobs::velocity::VelocityAlert;
use paystream::jobs::{Payment, Status};

use common::{cpu_seconds, env, median};

/// The hash maps of the loops: the same fast hasher the engine's window state uses, so the loop
/// is what a performance-minded person would write.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The jobs' out-of-orderness bound (their default), ms.
const BOUND_MS: u64 = 2_000;

/// Runs `f` once: wall seconds and CPU seconds.
fn timed(f: impl FnOnce()) -> (f64, f64) {
    let (t, c) = (Instant::now(), cpu_seconds());
    f();
    (t.elapsed().as_secs_f64(), cpu_seconds() - c)
}

fn generator(events: u64) -> paystream::engine::source::Generator<Payment> {
    let mut options = GenOptions::new([("count".to_string(), events.to_string())].into());
    Payment::generator(&mut options).expect("generator")
}

fn writer<T: CsvRecord>(path: &Path) -> BufWriter<File> {
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path).expect("create the loop's output"));
    writeln!(out, "{}", T::csv_header()).expect("write");
    out
}

fn write_row(out: &mut BufWriter<File>, line: &mut String, row: &impl CsvRecord) {
    line.clear();
    row.write_csv(line);
    line.push('\n');
    out.write_all(line.as_bytes()).expect("write");
}

/// Hands every window whose end the watermark has reached to `emit`, in end order.
fn emit_closed<A>(open: &mut BTreeMap<u64, A>, watermark: u64, emit: &mut impl FnMut(u64, A)) {
    while let Some(entry) = open.first_entry() {
        if *entry.key() > watermark {
            break;
        }
        let end = *entry.key();
        emit(end, entry.remove());
    }
}

/// `throughput-windows` by hand: per merchant and 10 s tumbling window, count, sum, approvals,
/// max and p99 amount (an HdrHistogram at 2 significant digits, as the job's `Percentiles`).
fn throughput_loop(events: u64, path: &Path) {
    struct Acc {
        count: u64,
        sum: i64,
        approved: u64,
        max: i64,
        amounts: hdrhistogram::Histogram<u32>,
        amounts_max: u64,
    }
    let generator = generator(events);
    let size = 10_000;
    let mut out = writer::<MerchantWindow>(path);
    let mut line = String::new();
    let mut open: BTreeMap<u64, Map<u64, Acc>> = BTreeMap::new();
    let mut emit = |end: u64, accs: Map<u64, Acc>| {
        for (merchant_id, a) in accs {
            let p99 = a.amounts.value_at_quantile(0.99).min(a.amounts_max);
            let row = MerchantWindow {
                window_start_ms: end - size,
                window_end_ms: end,
                merchant_id,
                count: a.count,
                sum_amount_cents: a.sum,
                approved_count: a.approved,
                approval_rate: a.approved as f64 / a.count as f64,
                max_amount_cents: a.max,
                p99_amount_cents: p99,
            };
            write_row(&mut out, &mut line, &row);
        }
    };
    let mut max_ts = 0u64;
    // The job reads the generator's partitions round-robin; for the loop, the index order is the same data.
    for i in 0..generator.count {
        let p = (generator.record)(i);
        max_ts = max_ts.max(p.ts_ms);
        let watermark = max_ts.saturating_sub(BOUND_MS);
        let end = p.ts_ms - p.ts_ms % size + size;
        if end <= watermark {
            continue; // late: the job sends it to `late_payments` (the default generator makes none)
        }
        let acc = open.entry(end).or_default().entry(p.merchant_id).or_insert_with(|| Acc {
            count: 0,
            sum: 0,
            approved: 0,
            max: i64::MIN,
            amounts: hdrhistogram::Histogram::new(2).expect("2 significant digits"),
            amounts_max: 0,
        });
        acc.count += 1;
        acc.sum += p.amount_cents;
        acc.approved += u64::from(p.status == Status::Approved);
        acc.max = acc.max.max(p.amount_cents);
        let amount = (p.amount_cents.max(0) as u64).min(u64::MAX / 4);
        let _ = acc.amounts.record(amount);
        acc.amounts_max = acc.amounts_max.max(amount);
        emit_closed(&mut open, watermark, &mut emit);
    }
    while let Some((end, accs)) = open.pop_first() {
        emit(end, accs);
    }
    out.flush().expect("flush");
}

/// `card-velocity` by hand: per card, count and sum in 60 s windows sliding every 10 s; a row for
/// every window with at least 3 payments. Each payment is added to the 6 windows covering it.
fn velocity_loop(events: u64, path: &Path) {
    let generator = generator(events);
    let (size, slide, min_count) = (60_000u64, 10_000u64, 3u64);
    let mut out = writer::<VelocityAlert>(path);
    let mut line = String::new();
    // Window end -> card -> (count, sum).
    let mut open: BTreeMap<u64, Map<u64, (u64, i64)>> = BTreeMap::new();
    let mut emit = |end: u64, accs: Map<u64, (u64, i64)>| {
        for (card_id, (count, sum_amount_cents)) in accs {
            if count >= min_count {
                let row = VelocityAlert { window_start_ms: end - size, window_end_ms: end, card_id, count, sum_amount_cents };
                write_row(&mut out, &mut line, &row);
            }
        }
    };
    let mut max_ts = 0u64;
    for i in 0..generator.count {
        let p = (generator.record)(i);
        max_ts = max_ts.max(p.ts_ms);
        let watermark = max_ts.saturating_sub(BOUND_MS);
        let last_start = p.ts_ms - p.ts_ms % slide;
        if last_start + size <= watermark {
            continue; // late for every window: the job sends it to `late_payments` (none by default)
        }
        // Windows [start, start + size) with start a multiple of the slide and ts inside.
        let first_start = if p.ts_ms >= size { ((p.ts_ms - size) / slide + 1) * slide } else { 0 };
        for start in (first_start..=last_start).step_by(slide as usize) {
            let end = start + size;
            if end > watermark {
                let acc = open.entry(end).or_default().entry(p.card_id).or_insert((0, 0));
                acc.0 += 1;
                acc.1 += p.amount_cents;
            }
        }
        emit_closed(&mut open, watermark, &mut emit);
    }
    while let Some((end, accs)) = open.pop_first() {
        emit(end, accs);
    }
    out.flush().expect("flush");
}

/// Lines of a file (header included) and an order-independent checksum of them.
fn lines_and_checksum(path: &Path) -> (u64, u64) {
    let file = BufReader::new(File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
    file.lines().fold((0, 0), |(n, sum), line| (n + 1, sum.wrapping_add(stable_hash(&line.expect("read")))))
}

struct Workload {
    job: &'static str,
    sink: &'static str,
    baseline: fn(u64, &Path),
    /// (label, workers, checkpoint interval)
    variants: &'static [(&'static str, usize, Option<u64>)],
}

const WORKLOADS: [Workload; 2] = [
    Workload {
        job: "throughput-windows",
        sink: "windows",
        baseline: throughput_loop,
        variants: &[
            ("paystream, 1 worker", 1, None),
            ("paystream, 2 workers", 2, None),
            ("paystream, 1 worker, chk 1s", 1, Some(1_000)),
            ("paystream, 1 worker, chk 200ms", 1, Some(200)),
        ],
    },
    Workload {
        job: "card-velocity",
        sink: "alerts",
        baseline: velocity_loop,
        variants: &[("paystream, 1 worker", 1, None), ("paystream, 2 workers", 2, None)],
    },
];

fn main() {
    let events = env("EVENTS", 2_000_000);
    let runs = env("RUNS", 3) as usize;
    let loop_only = env("LOOP_ONLY", 0) == 1;
    let only: Option<Vec<String>> = std::env::var("JOBS").ok().map(|j| j.split(',').map(str::to_string).collect());
    let jobs = paystream::jobs::all_jobs();
    let dir = std::env::temp_dir().join("paystream-bench");
    std::fs::create_dir_all(&dir).expect("bench directory");
    let mut ratios = Vec::new();
    for w in WORKLOADS.iter().filter(|w| only.as_ref().is_none_or(|o| o.iter().any(|j| j == w.job))) {
        let loop_file = dir.join(format!("{}-loop.csv", w.job));
        let job_file: PathBuf = dir.join(format!("{}.csv", w.sink));
        println!("\n{}, {events} generated events, median of {runs} runs (release build)", w.job);
        println!("{:<32} {:>8} {:>12} {:>12} {:>9} {:>9}", "variant", "wall s", "events/s", "CPU µs/evt", "vs loop", "CPU vs");
        let per_event = |cpu: f64| cpu * 1e6 / events as f64;
        let spec = jobs.iter().find(|j| j.name == w.job).expect("job");
        let sources = [("payments".to_string(), format!("gen:count={events}"))].into();
        let sinks = [(w.sink.to_string(), format!("file:{}", job_file.display()))].into();
        let plan = RunPlan::resolve(spec, &sources, &sinks, &BTreeMap::new(), std::sync::Arc::new(paystream::connectors())).expect("plan");
        let checkpoints = dir.join("checkpoints");
        let variants: &[(&str, usize, Option<u64>)] = if loop_only { &[] } else { w.variants };
        // Rounds: the loop and every variant, `runs` times over. Interleaved so that a slow
        // spell of the (virtual) machine hits the loop and the engine alike; the ratios are the
        // medians of each round's ratio.
        let mut loop_samples = Vec::with_capacity(runs);
        let mut samples: Vec<Vec<(f64, f64)>> = vec![Vec::with_capacity(runs); variants.len()];
        for round in 0..runs {
            // Odd rounds run the loop after the variants: whatever one run leaves behind (the
            // allocator's free pages, the caches) favours neither side.
            let loop_last = round % 2 == 1 && !variants.is_empty();
            if !loop_last {
                loop_samples.push(timed(|| (w.baseline)(events, &loop_file)));
            }
            let mut outputs = Vec::new();
            for (&(label, workers, interval_ms), out) in variants.iter().zip(samples.iter_mut()) {
                let checkpoint =
                    interval_ms.map(|ms| CheckpointConfig { dir: checkpoints.clone(), interval: Duration::from_millis(ms), retain: 3 });
                let options = RunOptions { workers, checkpoint, ..RunOptions::default() };
                out.push(timed(|| {
                    std::fs::remove_dir_all(&checkpoints).ok();
                    run(&plan, &options).expect("run");
                }));
                outputs.push((label, lines_and_checksum(&job_file)));
            }
            if loop_last {
                loop_samples.push(timed(|| (w.baseline)(events, &loop_file)));
            }
            // Every run must write what the loop wrote (nothing to compare with `LOOP_ONLY`, whose
            // profile should hold the loop alone).
            if !outputs.is_empty() {
                let want = lines_and_checksum(&loop_file);
                for (label, got) in outputs {
                    assert_eq!(got, want, "{} ({label}) wrote other lines than the hand-written loop: (lines, checksum)", w.job);
                }
            }
        }
        let walls = |xs: &[(f64, f64)]| median(xs.iter().map(|x| x.0).collect());
        let cpus = |xs: &[(f64, f64)]| median(xs.iter().map(|x| x.1).collect());
        let (loop_wall, loop_cpu) = (walls(&loop_samples), cpus(&loop_samples));
        println!(
            "{:<32} {:>8.3} {:>12.0} {:>12.3} {:>9} {:>9}",
            "hand-written loop",
            loop_wall,
            events as f64 / loop_wall,
            per_event(loop_cpu),
            "1.00x",
            "1.00x"
        );
        for (&(label, workers, interval_ms), xs) in variants.iter().zip(&samples) {
            let (wall, cpu) = (walls(xs), cpus(xs));
            let wall_ratio = median(loop_samples.iter().zip(xs).map(|(l, e)| l.0 / e.0).collect());
            let cpu_ratio = median(loop_samples.iter().zip(xs).map(|(l, e)| l.1 / e.1).collect());
            println!(
                "{:<32} {:>8.3} {:>12.0} {:>12.3} {:>8.2}x {:>8.2}x",
                label,
                wall,
                events as f64 / wall,
                per_event(cpu),
                wall_ratio,
                cpu_ratio
            );
            if workers == 1 && interval_ms.is_none() {
                ratios.push((w.job, wall_ratio, cpu_ratio));
            }
        }
        if loop_only {
            continue;
        }
        println!("output checked: {} lines, the same as the loop's", lines_and_checksum(&loop_file).0 - 1);
    }
    if !ratios.is_empty() {
        println!("\nengine/loop, 1 worker (wall; CPU):");
        for (job, wall, cpu) in ratios {
            println!("  {job:<20} {wall:.2}x; {cpu:.2}x");
        }
    }
}
