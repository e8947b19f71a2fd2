//! The `paystream` command: list and run the built-in jobs.

fn main() -> std::process::ExitCode {
    paystream::cli::main(paystream::jobs::all_jobs())
}
