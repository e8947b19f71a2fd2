//! The `paystream` command: list and run the built-in jobs.

/// mimalloc instead of the system allocator: records are allocated by one operator and freed in
/// batches by another, often on another thread, which keeps glibc's malloc out of its fast
/// per-thread caches (consolidating and splitting chunks instead); mimalloc's free lists per page
/// make both ends cheap.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    paystream::cli::main(paystream::jobs::all_jobs())
}
