//! What jobs compose on top of the engine's streams: windows and aggregates.
//!
//! Operators are extension traits with one job each ([`window::WindowExt`]); import them through
//! the prelude.

pub mod aggregate;
pub mod window;

pub use aggregate::{Aggregate, Count, CountAndSum, CountSum, Fold, Max, Min, Sum};
pub use window::{Tumbling, WindowExt, WindowResult, WindowedStream};
