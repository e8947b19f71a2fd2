//! The `paystream` command: list and run the built-in jobs.

/// mimalloc instead of the system allocator: records are allocated by one operator and freed in
/// batches by another, often on another thread, which keeps glibc's malloc out of its fast
/// per-thread caches (consolidating and splitting chunks instead); mimalloc's free lists per page
/// make both ends cheap. mimalloc v2, not the crate's default v3: equally fast here (callgrind), but
/// v3 held up to 3.5x the peak RSS of glibc on the window jobs. Through [`paystream::alloc::MiMalloc`],
/// which takes mimalloc's plain entry points where it can. A binary of your own built on
/// `paystream::cli::main` keeps whatever allocator it declares.
#[global_allocator]
static ALLOCATOR: paystream::alloc::MiMalloc = paystream::alloc::MiMalloc;

fn main() -> std::process::ExitCode {
    paystream::cli::main(paystream::jobs::all_jobs())
}
