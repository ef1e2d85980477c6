//! The `tidemark` command line.

mod demo;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Durable, versioned collections with frontier semantics.
#[derive(Debug, Parser)]
#[command(name = "tidemark", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs an end-to-end scenario against a backend and prints what
    /// happens: tables, appends, snapshots, a lag read policy, compaction,
    /// a subscription and a drop.
    Demo {
        /// The backend: memory://NAME, postgres://... or s3://BUCKET/PREFIX?...
        #[arg(long, default_value = "memory://demo")]
        backend: String,
        /// How many times to append.
        #[arg(long, default_value_t = 50)]
        ticks: u64,
        /// How many accounts the balances table holds.
        #[arg(long, default_value_t = 10)]
        accounts: i64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Demo {
            backend,
            ticks,
            accounts,
        } => {
            let options = demo::DemoOptions {
                backend,
                ticks,
                accounts,
            };
            let mut stdout = std::io::stdout().lock();
            match runtime.block_on(demo::run(&options, &mut stdout)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("error: {err}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
