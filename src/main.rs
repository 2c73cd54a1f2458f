use std::process::ExitCode;

fn main() -> ExitCode {
    dropship::cli::main()
}
