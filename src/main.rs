#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    rivulet::cli::main()
}
