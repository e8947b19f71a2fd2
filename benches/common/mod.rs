//! What the bench binaries share: the binary's allocator, settings from the environment, medians
//! and the process's CPU time.
#![allow(dead_code)]

/// The allocator of the `paystream` binary (src/main.rs), so that benches measure what users run.
#[global_allocator]
static ALLOCATOR: paystream::alloc::MiMalloc = paystream::alloc::MiMalloc;

/// The environment variable `name` as a number, or `default`.
pub fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The median (the upper one of an even count).
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

/// CPU seconds (user + system, all threads) this process has used so far.
pub fn cpu_seconds() -> f64 {
    paystream::bench::usage().0
}
