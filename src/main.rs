//! The `segments` command. Everything it does, from parsing the arguments
//! to reporting errors, is the library's [`segments::cli`]: one crate
//! compiles the commands and the engine they call.

fn main() -> std::process::ExitCode {
    segments::cli::main()
}
