//! The `tidemark` command line.

mod demo;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tidemark::cli::{ToolError, bench, cat, doctor, inspect, replica};

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
    /// a subscription, a drop, and a storage instance whose replica runs a
    /// counter and an auction ingestion and a file sink.
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
        /// A `tidemark replica` process (host:port) to run the storage
        /// instance on, instead of a replica in this process; it must use
        /// the same (postgres:// or s3://) store.
        #[arg(long)]
        replica: Option<String>,
        /// Where the file sink writes (default: a fresh temporary directory).
        #[arg(long)]
        sink_dir: Option<std::path::PathBuf>,
    },
    /// Lists the collections the controller metadata records (id, kind,
    /// shard, since, upper), every shard with its frontiers, stored updates,
    /// bytes and parts, and the shards no collection claims. Read-only: a
    /// running controller is not disturbed.
    Inspect {
        /// The backend: memory://NAME, postgres://... or s3://BUCKET/PREFIX?...
        url: String,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Prints a collection's snapshot and, with --follow, every later change
    /// and progress until Ctrl-C or the collection is sealed. Read-only: it
    /// reads the collection's shard directly and holds no read hold.
    Cat {
        /// The backend: memory://NAME, postgres://... or s3://BUCKET/PREFIX?...
        url: String,
        /// The collection id, e.g. u1.
        id: String,
        /// The snapshot time (default: the latest readable time).
        #[arg(long)]
        as_of: Option<u64>,
        /// Keep printing changes and progress after the snapshot.
        #[arg(long)]
        follow: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = cat::Format::Table)]
        format: cat::Format,
    },
    /// Runs an open-loop workload of appends and snapshots, then the
    /// store's raw operations on the same bytes (S3: PUT/GET; PostgreSQL:
    /// INSERT and COPY, SELECT; memory: a locked Vec), and prints p50/p99
    /// latency, throughput and tidemark/raw ratios. Each phase lasts
    /// --duration; its shards and raw data are removed afterwards. Refuses a
    /// store not on loopback unless --i-know.
    Bench {
        /// The backend: memory://NAME, postgres://... or s3://BUCKET/PREFIX?...
        url: String,
        /// Shards written.
        #[arg(long, default_value_t = 4)]
        shards: usize,
        /// Concurrent writers (writer i appends to shard i % shards).
        #[arg(long, default_value_t = 4)]
        writers: usize,
        /// Updates per append.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Concurrent readers.
        #[arg(long, default_value_t = 1)]
        readers: usize,
        /// Seconds each phase runs (fractions allowed).
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Operations per second per writer and per reader.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        /// Serve Prometheus metrics on this loopback address while running,
        /// e.g. 127.0.0.1:9464.
        #[arg(long)]
        metrics: Option<std::net::SocketAddr>,
        /// Write to a store that is not on loopback.
        #[arg(long)]
        i_know: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Serves a storage replica: runs the ingestions and sinks a
    /// controller connecting over TCP asks for, writing to the backend
    /// given here (never sent by the controller, never logged). Prints
    /// `listening on ADDR` once bound; serves until Ctrl-C or SIGTERM.
    Replica {
        /// Where controllers connect, host:port (port 0 picks a free one).
        #[arg(long)]
        listen: String,
        /// The backend: memory://NAME, postgres://... or s3://BUCKET/PREFIX?...
        #[arg(long)]
        backend: String,
        /// Timely worker threads in this process.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// This process's index in --peers.
        #[arg(long, default_value_t = 0)]
        process: usize,
        /// The timely addresses of every process of the replica, in the
        /// same order for each process (host:port,host:port,...).
        #[arg(long)]
        peers: Option<String>,
    },
    /// Checks that a store is safe for tidemark data and says why not.
    /// S3: conditional writes enforced and atomic under a race (8 writers
    /// per round), ETags, PUT/GET/conditional PUT latency. PostgreSQL:
    /// server version, fsync, synchronous_commit,
    /// default_transaction_isolation, schema version. Exit status: 0 safe,
    /// 1 not safe, 2 could not check.
    Doctor {
        /// The backend: memory://NAME, postgres://... or s3://BUCKET/PREFIX?...
        url: String,
        /// Rounds of each conditional-write race.
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Splits `--peers A,B,...` into addresses.
fn peer_list(text: &str) -> Result<Vec<String>, String> {
    let peers: Vec<String> = text
        .split(',')
        .map(|peer| peer.trim().to_string())
        .collect();
    if peers.iter().any(String::is_empty) {
        return Err(format!("an empty address in the peer list: {text:?}"));
    }
    Ok(peers)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs, and spans as they close (with their outcome), go to stderr,
    // filtered by RUST_LOG (default: warnings only).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
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
    let mut stdout = std::io::stdout().lock();
    match cli.command {
        Command::Demo {
            backend,
            ticks,
            accounts,
            replica,
            sink_dir,
        } => {
            let options = demo::DemoOptions {
                backend,
                ticks,
                accounts,
                replica,
                sink_dir,
            };
            match runtime.block_on(demo::run(&options, &mut stdout)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("error: {err}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Inspect { url, json } => report(runtime.block_on(async {
            let report = inspect::run(&url).await?;
            if json {
                serde_json::to_writer_pretty(&mut stdout, &report)
                    .map_err(std::io::Error::other)?;
                writeln!(stdout)?;
            } else {
                inspect::write_table(&report, &mut stdout)?;
            }
            Ok(())
        })),
        Command::Cat {
            url,
            id,
            as_of,
            follow,
            format,
        } => {
            let options = cat::CatOptions {
                as_of,
                follow,
                format,
            };
            report(
                runtime
                    .block_on(cat::run(&url, &id, options, &mut stdout))
                    .map(drop),
            )
        }
        Command::Bench {
            url,
            shards,
            writers,
            batch,
            readers,
            duration,
            rate,
            metrics,
            i_know,
            json,
        } => {
            let duration = match std::time::Duration::try_from_secs_f64(duration) {
                Ok(duration) => duration,
                Err(err) => {
                    eprintln!("error: invalid argument: --duration: {err}: duration={duration}");
                    return ExitCode::FAILURE;
                }
            };
            let options = bench::BenchOptions {
                shards,
                writers,
                batch,
                readers,
                duration,
                rate,
                i_know,
                metrics,
                progress: !json,
            };
            report(runtime.block_on(async {
                let report = bench::run(&url, &options).await?;
                if json {
                    serde_json::to_writer_pretty(&mut stdout, &report)
                        .map_err(std::io::Error::other)?;
                    writeln!(stdout)?;
                } else {
                    bench::write_text(&report, &mut stdout)?;
                }
                Ok(())
            }))
        }
        Command::Replica {
            listen,
            backend,
            workers,
            process,
            peers,
        } => {
            let peers = match peers.as_deref().map(peer_list).transpose() {
                Ok(peers) => peers.unwrap_or_default(),
                Err(err) => {
                    eprintln!("error: invalid argument: --peers: {err}");
                    return ExitCode::FAILURE;
                }
            };
            let options = replica::ReplicaOptions {
                listen,
                backend,
                workers,
                process,
                peers,
            };
            // SUBTLE: timely's cluster setup prints to stdout from its own
            // threads; holding the lock here would deadlock it.
            drop(stdout);
            report(runtime.block_on(replica::run(&options, &mut std::io::stdout())))
        }
        Command::Doctor { url, rounds, json } => {
            let options = doctor::DoctorOptions { rounds };
            run_doctor(&runtime, &url, options, json, &mut stdout)
        }
    }
}

/// Runs `doctor`: exit 0 when safe, 1 when not, 2 when it could not check.
fn run_doctor(
    runtime: &tokio::runtime::Runtime,
    url: &str,
    options: doctor::DoctorOptions,
    json: bool,
    out: &mut dyn Write,
) -> ExitCode {
    let report = match runtime.block_on(doctor::run(url, options)) {
        Ok(report) => report,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    let written = if json {
        serde_json::to_writer_pretty(&mut *out, &report)
            .map_err(std::io::Error::other)
            .and_then(|()| writeln!(out))
    } else {
        doctor::write_text(&report, out)
    };
    if let Err(err) = written {
        eprintln!("error: cannot write output: {err}");
        return ExitCode::from(2);
    }
    if report.safe {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The exit status of a command: failure (with the error on stderr) on `Err`.
fn report(outcome: Result<(), ToolError>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
