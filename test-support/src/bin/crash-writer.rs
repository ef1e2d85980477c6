//! `crash-writer URL RUN [MAX_APPENDS]`: appends ledger groups through the
//! storage controller to the backend `URL` names, in a loop, printing each
//! attempt before it is submitted and each acknowledgement once the
//! controller reports it durable (see `tidemark_test_support::ledger` for
//! the lines). The crash-loop test kills it with SIGKILL at random points.
//!
//! It stops by itself after `MAX_APPENDS` appends (default 100000) or two
//! minutes, whichever comes first, so a writer nobody kills does not run
//! forever. It exits with status 3 when an append fails (the test starts a
//! new writer, as it does after a kill), 2 on bad arguments.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tidemark_storage_controller::ControllerConfig;
use tidemark_test_support::ledger::{Append, Ledger};
use tidemark_test_support::writer::{COLLECTIONS, append_group, attach, uppers};

/// Rows per append.
const ROWS: i64 = 4;
/// The longest a writer runs.
const LIFETIME: Duration = Duration::from_secs(120);

fn print_line(line: &str) {
    let mut stdout = std::io::stdout().lock();
    // A closed pipe means the test is gone: nothing left to report to.
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let arguments: Vec<String> = std::env::args().collect();
    let (Some(url), Some(run)) = (
        arguments.get(1),
        arguments.get(2).and_then(|run| run.parse::<i64>().ok()),
    ) else {
        eprintln!("usage: crash-writer URL RUN [MAX_APPENDS]");
        return ExitCode::from(2);
    };
    let max_appends: i64 = match arguments.get(3).map(|max| max.parse()) {
        None => 100_000,
        Some(Ok(max)) => max,
        Some(Err(err)) => {
            eprintln!("crash-writer: bad MAX_APPENDS: {err}");
            return ExitCode::from(2);
        }
    };
    let backend = match tidemark::open(url).await {
        Ok(backend) => backend,
        Err(err) => {
            eprintln!("crash-writer: cannot open the backend: {err}");
            return ExitCode::from(3);
        }
    };
    let mut controller = match attach(backend, ControllerConfig::default()).await {
        Ok(controller) => controller,
        Err(err) => {
            eprintln!("crash-writer: cannot attach a controller: {err}");
            return ExitCode::from(3);
        }
    };
    print_line(&format!("attached run={run} epoch={}", controller.epoch()));
    let mut upper_of = uppers(&controller);
    let started = Instant::now();
    for seq in 0..max_appends {
        if started.elapsed() > LIFETIME {
            break;
        }
        let collection = COLLECTIONS[seq as usize % COLLECTIONS.len()];
        let lower = upper_of[&collection];
        let append = Append {
            collection,
            run,
            seq,
            parts: ROWS,
            lower,
            upper: lower + 1,
        };
        print_line(&Ledger::attempt_line(&append));
        if let Err(err) = append_group(&mut controller, &append).await {
            eprintln!("crash-writer: append failed: {append}: {err}");
            return ExitCode::from(3);
        }
        print_line(&Ledger::ack_line(&append));
        upper_of.insert(collection, append.upper);
    }
    ExitCode::SUCCESS
}
