//! What jobs compose on top of the engine's streams: windows and aggregates.
//!
//! Operators are extension traits with one job each ([`window::WindowExt`]); import them through
//! the prelude.

pub mod aggregate;
pub mod window;

pub use aggregate::{
    Aggregate, Average, Count, CountAndSum, CountDistinct, CountSum, Fold, Max, Min, Percentiles, QuantileSketch, Quantiles, Sum,
};
pub use window::{Session, Sliding, Tumbling, WindowExt, WindowResult, WindowedStream, Windows};
