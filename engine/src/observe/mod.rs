//! Observing a running job from outside.
//!
//! * [`timely_output`]: timely's connection messages in cluster mode go to the log, not stdout.

pub mod timely_output;
