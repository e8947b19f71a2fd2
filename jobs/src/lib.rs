//! Payment event types, their deterministic generators, and the jobs paystream ships.
//!
//! * [`payment`]: `Payment`, `Authorization` and `Status`, with CSV and JSON forms.
//! * [`generator`]: the `gen:` source for payments and authorizations.
//! * [`throughput`]: `throughput-windows`, per-merchant volume per 10 s window.
//! * [`generate`]: `generate-payments`, sample input as CSV or JSON lines.
//! * [`velocity`]: `card-velocity`, cards paying often within sliding windows.
//! * [`auth_match`]: `auth-match`, payments joined with their authorizations.
//! * [`fraud`]: `fraud-detection`, five fraud rules.
//! * [`exposure`]: `merchant-exposure`, updating views on differential dataflow.
//! * [`nexmark`]: the Nexmark benchmark's events, generator and queries (`nexmark-q0`, ...).
//! * [`registry`]: every job, for the CLI.

pub mod auth_match;
pub mod exposure;
pub mod fraud;
pub mod generate;
pub mod generator;
pub mod nexmark;
pub mod payment;
pub mod registry;
pub mod rules;
pub mod text;
pub mod throughput;
pub mod velocity;

pub use payment::{Adjustment, AdjustmentKind, Authorization, BlockedCard, Payment, Status};
pub use registry::{all_jobs, connectors};
