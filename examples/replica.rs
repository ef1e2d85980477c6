//! A storage replica in another process: a controller in this process
//! reaches a `tidemark replica` process over TCP; both open the same
//! PostgreSQL schema. The replica runs a counter ingestion and a file sink
//! exporting it. Half-way the replica is killed with SIGKILL and a new one
//! is started on the same address; the controller reconnects and replays
//! its commands, and the ingestion and the sink carry on where they were:
//! the counter holds every value once and the sink's file holds every
//! update once.
//!
//! Build the binary first, then run the example on a fresh schema (it is
//! created; by default `tidemark_replica_example_PID` on the local server):
//! `cargo build --features postgres --bin tidemark && \
//!  cargo run --example replica --features postgres`
//! (`TIDEMARK_POSTGRES_URL` names another server or schema, `TIDEMARK_BIN`
//! another binary).

use std::error::Error;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tidemark::DynBackend;
use tidemark::controller::protocol::ClusterReplicaLocation;
use tidemark::controller::tcp::{TcpConfig, TcpTransport};
use tidemark::controller::{Controller, ControllerConfig, ReconnectPolicy, StorageController};
use tidemark::replica::file_sink::read_committed;
use tidemark::replica::generator::Generator;
use tidemark::types::{
    CollectionDescription, DataSource, Datum, ExportDescription, GlobalId, IngestionDescription,
    LoadGenerator, PersistBackend, SinkConnection, SourceConnection, StorageInstanceId,
    display_frontier,
};
use timely::progress::Antichain;

const INSTANCE: StorageInstanceId = StorageInstanceId(1);
const COUNTER: GlobalId = GlobalId::User(1);
const SINK: GlobalId = GlobalId::User(2);

/// A replica process, killed (by pid) when dropped.
struct ReplicaProcess {
    child: Child,
    address: String,
}

impl ReplicaProcess {
    fn start(url: &str, listen: &str) -> Result<ReplicaProcess, Box<dyn Error>> {
        let binary = std::env::var_os("TIDEMARK_BIN").map_or_else(
            || -> Result<PathBuf, Box<dyn Error>> {
                // target/debug/examples/replica -> target/debug/tidemark
                let exe = std::env::current_exe()?;
                let dir = exe
                    .parent()
                    .and_then(|dir| dir.parent())
                    .ok_or("no target dir")?;
                Ok(dir.join("tidemark"))
            },
            |path| Ok(PathBuf::from(path)),
        )?;
        let mut child = Command::new(&binary)
            .args([
                "replica",
                "--listen",
                listen,
                "--backend",
                url,
                "--workers",
                "2",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|err| format!("cannot start {}: {err} (build it first)", binary.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let address = loop {
            let Some(line) = lines.next() else {
                return Err("the replica exited before it listened".into());
            };
            if let Some(rest) = line?.strip_prefix("listening on ") {
                break rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
            }
        };
        // Keep reading its output so that it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
        Ok(ReplicaProcess { child, address })
    }
}

impl Drop for ReplicaProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type ExampleController = Controller<u64, DynBackend>;

/// Processes controller responses until the counter's upper reaches `goal`.
async fn run_until(c: &mut ExampleController, goal: u64) -> Result<(), Box<dyn Error>> {
    let wait = async {
        while c.collection(COUNTER)?.write_frontier.less_than(&goal) {
            tokio::select! {
                () = c.ready() => c.process().await?,
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        Ok::<_, Box<dyn Error>>(())
    };
    tokio::time::timeout(Duration::from_secs(120), wait)
        .await
        .map_err(|_| "the replica made no progress within two minutes")?
}

fn report(c: &ExampleController, label: &str) -> Result<(), Box<dyn Error>> {
    println!(
        "{label}: counter upper {}, sink upper {}",
        display_frontier(&c.collection(COUNTER)?.write_frontier),
        display_frontier(&c.export(SINK)?.write_frontier),
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let url = std::env::var("TIDEMARK_POSTGRES_URL").unwrap_or_else(|_| {
        format!(
            "postgres://postgres@127.0.0.1:5432/test?schema=tidemark_replica_example_{}",
            std::process::id()
        )
    });
    let backend = tidemark::open(&url).await?;
    let sink_dir =
        std::env::temp_dir().join(format!("tidemark-replica-example-{}", std::process::id()));
    let config = ControllerConfig {
        replica_reconnect: ReconnectPolicy {
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(500),
        },
        ..ControllerConfig::default()
    };
    let transport = TcpTransport::<u64>::new(TcpConfig::default());
    let mut c = Controller::with_transport(backend, config, transport as Arc<_>).await?;

    let replica = ReplicaProcess::start(&url, "127.0.0.1:0")?;
    println!(
        "replica process {} listens on {}",
        replica.child.id(),
        replica.address
    );

    let generator = LoadGenerator::Counter {
        max_cardinality: None,
    };
    let relation = Generator::relations(&generator)[0].1.clone();
    c.create_instance(INSTANCE);
    let description = CollectionDescription::new(
        relation,
        DataSource::Ingestion(IngestionDescription {
            instance_id: INSTANCE,
            connection: SourceConnection::LoadGenerator {
                generator,
                tick: Duration::from_millis(20),
            },
            remap_collection_id: None,
            source_exports: Default::default(),
        }),
    );
    c.create_collections(vec![(COUNTER, description)]).await?;
    let start = c.collection(COUNTER)?.write_frontier.clone();
    let token = c.prepare_export(SINK, COUNTER)?;
    let as_of = token.acquired_since().clone();
    c.create_exports(vec![(
        token,
        ExportDescription {
            from: COUNTER,
            from_desc: c.collection(COUNTER)?.description.desc.clone(),
            connection: SinkConnection::File {
                path: sink_dir.clone(),
            },
            as_of: as_of.clone(),
            with_snapshot: true,
            instance_id: INSTANCE,
        },
    )])
    .await?;
    c.initialization_complete();
    c.connect_replica(
        INSTANCE,
        ClusterReplicaLocation::single(replica.address.clone()),
    );
    println!(
        "counter u1 starts at upper {}; file sink u2 writes {} from as_of {}",
        display_frontier(&start),
        sink_dir.display(),
        display_frontier(&as_of)
    );

    let first = start.elements().first().copied().unwrap_or(0);
    run_until(&mut c, first + 50).await?;
    report(&c, "before the kill")?;
    let address = replica.address.clone();
    drop(replica); // SIGKILL
    println!("killed the replica (SIGKILL); starting a new one on {address}");
    let replica = ReplicaProcess::start(&url, &address)?;
    run_until(&mut c, first + 100).await?;
    report(&c, "after the restart")?;

    // Check: every counter value once, and the sink's output is the
    // counter's updates from the as_of on.
    let shard = c.collection(COUNTER)?.collection_metadata.data_shard;
    let written = read_committed::<u64>(&sink_dir)?;
    let upper = PersistBackend::<u64>::frontiers(&**c.backend(), shard)
        .await?
        .upper;
    let updates =
        PersistBackend::<u64>::fetch(&**c.backend(), shard, &Antichain::from_elem(0), &upper)
            .await?;
    let mut values: Vec<i64> = updates
        .iter()
        .filter_map(|update| match update.row.unpack().first() {
            Some(Datum::Int64(value)) if update.diff == 1 => Some(*value),
            _ => None,
        })
        .collect();
    values.sort_unstable();
    let gaps_or_duplicates = values
        .windows(2)
        .filter(|pair| pair[1] != pair[0] + 1)
        .count();
    println!(
        "counter: {} values, {} gaps or duplicates; sink: {} updates committed",
        values.len(),
        gaps_or_duplicates,
        written.len()
    );
    let as_of_time = as_of.elements().first().copied().unwrap_or(0);
    let committed = written.iter().map(|(_, time, _)| *time).max();
    let mut expected: Vec<_> = updates
        .iter()
        .filter(|update| committed.is_some_and(|last| update.timestamp <= last))
        .map(|update| {
            (
                update.row.clone(),
                update.timestamp.max(as_of_time),
                update.diff,
            )
        })
        .collect();
    let mut written = written;
    consolidate(&mut expected);
    consolidate(&mut written);
    println!(
        "sink output equals the counter's updates from the as_of: {}",
        written == expected
    );
    drop(replica);
    let _ = std::fs::remove_dir_all(&sink_dir);
    if gaps_or_duplicates > 0 || written != expected {
        return Err("the replica lost or duplicated an update".into());
    }
    Ok(())
}

/// Sorts `(row, time, diff)` updates and sums the diffs of equal ones.
fn consolidate(updates: &mut Vec<(tidemark::types::Row, u64, i64)>) {
    updates.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    let mut merged: Vec<(tidemark::types::Row, u64, i64)> = Vec::with_capacity(updates.len());
    for (row, time, diff) in updates.drain(..) {
        match merged.last_mut() {
            Some(last) if last.0 == row && last.1 == time => last.2 += diff,
            _ => merged.push((row, time, diff)),
        }
    }
    merged.retain(|update| update.2 != 0);
    *updates = merged;
}
