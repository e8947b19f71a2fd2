//! Every job paystream ships, in the order `paystream jobs` lists them, and the connectors they
//! read and write through.

use paystream_engine::{Connectors, JobSpec};
use paystream_operators::connectors::{builtin, with_generator};

use crate::nexmark::{Auction, Bid, Person};
use crate::{Adjustment, Authorization, BlockedCard, Payment};

/// The registered jobs.
pub fn all_jobs() -> Vec<JobSpec> {
    vec![
        crate::throughput::SPEC,
        crate::velocity::SPEC,
        crate::auth_match::SPEC,
        crate::fraud::SPEC,
        crate::exposure::SPEC,
        crate::generate::SPEC,
        crate::generate::EVENTS_SPEC,
        crate::nexmark::q0::SPEC,
        crate::nexmark::q1::SPEC,
        crate::nexmark::q2::SPEC,
        crate::nexmark::q3::SPEC,
        crate::nexmark::q4::SPEC,
        crate::nexmark::q5::SPEC,
        crate::nexmark::q7::SPEC,
        crate::nexmark::q8::SPEC,
        crate::nexmark::generate::SPEC,
    ]
}

/// The built-in connectors (`file:`, `stdout:`) and the generators (`gen:`) of the payment
/// and Nexmark event types.
pub fn connectors() -> Connectors {
    let c = builtin();
    let c = with_generator::<Payment>(c);
    let c = with_generator::<Authorization>(c);
    let c = with_generator::<BlockedCard>(c);
    let c = with_generator::<Adjustment>(c);
    let c = with_generator::<Person>(c);
    let c = with_generator::<Auction>(c);
    let c = with_generator::<crate::rules::RuleChange>(c);
    with_generator::<Bid>(c)
}
