//! Every job paystream ships, in the order `paystream jobs` lists them.

use paystream_engine::JobSpec;

/// The registered jobs.
pub fn all_jobs() -> Vec<JobSpec> {
    vec![
        crate::throughput::SPEC,
        crate::velocity::SPEC,
        crate::auth_match::SPEC,
        crate::fraud::SPEC,
        crate::exposure::SPEC,
        crate::generate::SPEC,
    ]
}
