//! What jobs compose on top of the engine's streams: windows, aggregates and joins, and the
//! built-in connectors (`file:`, `stdout:`, `gen:`).
//!
//! Operators are extension traits with one job each ([`window::WindowExt`]); import them through
//! the prelude.

pub mod aggregate;
pub mod broadcast;
pub mod connectors;
pub mod join;
pub mod process;
mod slots;
pub mod window;

pub use aggregate::{
    Aggregate, Average, Count, CountAndSum, CountDistinct, CountSum, Fold, Max, Min, Percentile, Percentiles, QuantileSketch, Quantiles,
    Sum,
};
pub use broadcast::{
    BroadcastConnected, BroadcastConnectedStream, BroadcastExt, BroadcastProcessFunction, BroadcastStreamExt, KeyedBroadcastProcessFunction,
};
pub use join::{JoinExt, Joined, Side, WindowJoined};
pub use process::{Context, ProcessExt, ProcessFunction};
pub use window::{Session, Sliding, Tumbling, WindowExt, WindowResult, WindowedStream, Windows};
