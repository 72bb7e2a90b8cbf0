#![forbid(unsafe_code)]

/// See the `jemalloc` feature in Cargo.toml for why.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    rivulet::cli::main()
}
