//! `zoo`: a thin command line over zoo-runtime and the registered tasks.

mod cli;
mod commands;

use std::process::ExitCode;

use clap::error::{ContextKind, ContextValue, ErrorKind};

/// Exit codes: 0 success, 1 the work failed (for any input), 2 the command line was wrong.
const EXIT_FAILURE: u8 = 1;
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    // candle captures a backtrace into every error it makes when RUST_BACKTRACE is set, and zoo
    // shows errors as one line: RUST_LIB_BACKTRACE=0 keeps them out of errors while panics still
    // honour RUST_BACKTRACE. Set before any thread starts; a user's own RUST_LIB_BACKTRACE wins.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    // Before anything reads the catalogue, so that a bad ZOO_CATALOG file is reported, not ignored.
    if let Err(e) = zoo_runtime::Catalog::init() {
        eprintln!("zoo: error: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    let registry = zoo_pipeline::registry();
    let matches = match cli::command(registry).try_get_matches() {
        Ok(m) => m,
        Err(e) => return clap_error(e, registry),
    };
    match commands::dispatch(registry, &matches) {
        Ok(code) => code,
        // The reader went away (`zoo list | head`): nothing left to say to anyone, as with cat or rg.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("zoo: error: {}", zoo_pipeline::one_line(e.as_ref()));
            let usage = e.downcast_ref::<zoo_runtime::Error>().is_some_and(|e| e.is_usage())
                || e.downcast_ref::<zoo_pipeline::LoadError>().is_some_and(|e| e.is_usage());
            ExitCode::from(if usage { EXIT_USAGE } else { EXIT_FAILURE })
        }
    }
}

/// Help and version print as clap renders them; errors become one line naming what was wrong.
fn clap_error(e: clap::Error, registry: &zoo_runtime::Registry) -> ExitCode {
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return ExitCode::from(if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            EXIT_USAGE
        } else {
            0
        });
    }
    let message = match (e.kind(), e.get(ContextKind::InvalidSubcommand)) {
        (ErrorKind::InvalidSubcommand, Some(ContextValue::String(name)))
            if std::env::args().nth(1).as_deref() == Some("run") =>
        {
            let known: Vec<&str> = registry.tasks().map(|t| t.name()).collect();
            format!("unknown task '{name}'; known tasks: {} (see `zoo list`)", known.join(", "))
        }
        _ => {
            let rendered = e.render().to_string();
            let lines: Vec<&str> =
                rendered.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("Usage:")).collect();
            let mut first =
                lines.first().copied().unwrap_or("invalid command line").trim_start_matches("error: ").to_string();
            // "the following required arguments were not provided:" lists them on the next lines.
            if first.ends_with(':') {
                let listed: Vec<&str> = lines[1..]
                    .iter()
                    .copied()
                    .take_while(|l| !l.starts_with("tip:") && !l.starts_with("For more"))
                    .collect();
                first = format!("{first} {}", listed.join(" "));
            }
            let tips: Vec<&str> = lines.iter().copied().filter(|l| l.starts_with("tip:")).collect();
            if tips.is_empty() {
                first
            } else {
                format!("{first} ({})", tips.join("; "))
            }
        }
    };
    eprintln!("zoo: error: {message} (see --help)");
    ExitCode::from(EXIT_USAGE)
}
