//! Where the engine's log events go: stderr, as text or as JSON lines, filtered by level.
//!
//! The engine and operators emit `tracing` events with fields (a checkpoint's epoch, a sink's
//! name); only the binary decides where they go, here. The progress line, the end-of-run summary
//! and the final `error: ...` line are not log events: the CLI prints them itself, in every format.
//!
//! Which events show: `--log-level LEVEL` when given; otherwise `RUST_LOG` when set (with its full
//! syntax, such as `warn,paystream_engine::checkpoint=debug`); otherwise `info`. The flag wins
//! over the environment, as a command line usually does over a variable exported long before.
//!
//! Panics are logged too (target `panic`), so a JSON log stays JSON when a thread panics.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// `--log-level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line per event: time, level, module, message and fields.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and the event's fields.
    Json,
}

/// The logging flags of `run` and `bench`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct LogArgs {
    /// Show log events of this level and above [default: info, or RUST_LOG when set; this flag
    /// wins over RUST_LOG].
    #[arg(long, value_enum, value_name = "LEVEL")]
    pub log_level: Option<LogLevel>,

    /// How log events are written to stderr. The progress line, the summary and `error:` lines
    /// are not log events and keep their form.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl LogLevel {
    fn directive(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// The filter without a flag or `RUST_LOG`: info, except the NATS client, which logs every
/// connection at info (noise beside the run's own events).
const DEFAULT_FILTER: &str = "info,async_nats=warn";

/// The filter for these flags and this `RUST_LOG` value.
fn filter(args: &LogArgs, rust_log: Option<&str>) -> (EnvFilter, Option<String>) {
    if let Some(level) = args.log_level {
        return (EnvFilter::new(level.directive()), None);
    }
    match rust_log.map(str::trim).filter(|v| !v.is_empty()) {
        Some(spec) => match EnvFilter::try_new(spec) {
            Ok(f) => (f, None),
            Err(e) => (EnvFilter::new(DEFAULT_FILTER), Some(format!("ignoring RUST_LOG={spec:?}: {e}"))),
        },
        None => (EnvFilter::new(DEFAULT_FILTER), None),
    }
}

/// Sends log events to stderr as `args` say, and panics to the log. Call once, early in `main`;
/// later calls change nothing.
pub fn init(args: &LogArgs) {
    let (filter, problem) = filter(args, std::env::var("RUST_LOG").ok().as_deref());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let installed = match args.log_format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).with_span_list(false).try_init(),
    };
    if installed.is_err() {
        return;
    }
    if let Some(problem) = problem {
        tracing::warn!("{problem}");
    }
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("<unnamed>");
        let payload = info.payload();
        let message =
            payload.downcast_ref::<&str>().copied().or_else(|| payload.downcast_ref::<String>().map(String::as_str)).unwrap_or("");
        let location = info.location().map(|l| l.to_string()).unwrap_or_default();
        let backtrace = std::backtrace::Backtrace::capture();
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            tracing::error!(target: "panic", thread = name, %location, %backtrace, "thread '{name}' panicked at {location}: {message}");
        } else {
            tracing::error!(target: "panic", thread = name, %location, "thread '{name}' panicked at {location}: {message}");
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_over_rust_log_which_wins_over_the_default() {
        let flag = LogArgs { log_level: Some(LogLevel::Warn), ..LogArgs::default() };
        assert_eq!(filter(&flag, Some("trace")).0.to_string(), "warn");
        let none = LogArgs::default();
        assert_eq!(filter(&none, Some("debug")).0.to_string(), "debug");
        let default = EnvFilter::new(DEFAULT_FILTER).to_string();
        assert!(default.contains("info") && default.contains("async_nats=warn"), "{default}");
        assert_eq!(filter(&none, Some("  ")).0.to_string(), default);
        assert_eq!(filter(&none, None).0.to_string(), default);
        let (f, problem) = filter(&none, Some("paystream=notalevel"));
        assert_eq!(f.to_string(), default);
        assert!(problem.is_some_and(|p| p.contains("RUST_LOG")));
    }
}
