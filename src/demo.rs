//! `tidemark demo`: an end-to-end tour of the storage controller on any
//! backend: tables, appends at advancing times, snapshots at several
//! as_ofs, a lag read policy moving the since, compaction shrinking
//! storage, a subscription, a drop reclaiming a shard, and a storage
//! instance whose replica (in this process, or a `tidemark replica` process
//! given with `--replica`) runs a counter and an auction ingestion and a
//! file sink.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tidemark::controller::protocol::ClusterReplicaLocation;
use tidemark::controller::tcp::{TcpConfig, TcpTransport};
use tidemark::controller::{
    Controller, ControllerConfig, InProcessTransport, ReplicaTransport, StorageController,
    SubscriptionEvent,
};
use tidemark::replica::generator::Generator;
use tidemark::replica::{Replica, ReplicaConfig, ReplicaError};
use tidemark::types::{
    CollectionDescription, DataSource, Datum, ExportDescription, GlobalId, IngestionDescription,
    LoadGenerator, PersistBackend, ReadPolicy, RelationDesc, Row, ScalarType, SinkConnection,
    SourceConnection, StorageError, StorageInstanceId, StorageParameters, Update, display_frontier,
    frontier_time,
};
use tidemark::{DynBackend, OpenError};

/// What the demo does.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// The backend URL (`memory://NAME`, `postgres://...`, `s3://...`).
    pub backend: String,
    /// How many times to append.
    pub ticks: u64,
    /// How many accounts the balances table holds.
    pub accounts: i64,
    /// A `tidemark replica` process to use (`host:port`) instead of one in
    /// this process; it must write the same store.
    pub replica: Option<String>,
    /// Where the file sink writes (default: a fresh directory under the
    /// system's temporary directory).
    pub sink_dir: Option<PathBuf>,
}

/// Why the demo stopped.
#[derive(Debug, Error)]
pub enum DemoError {
    /// The backend could not be opened.
    #[error("cannot open the backend: {0}")]
    Open(#[from] OpenError),
    /// The controller failed.
    #[error("storage controller failed: {0}")]
    Storage(#[from] StorageError),
    /// A direct backend read failed.
    #[error("backend failed: {0}")]
    Backend(#[from] tidemark::BackendError),
    /// Writing the report failed.
    #[error("cannot write the report: {0}")]
    Output(#[from] std::io::Error),
    /// The options make no demo.
    #[error("invalid demo options: {0}")]
    Options(String),
    /// The in-process replica did not start.
    #[error("cannot start the replica: {0}")]
    Replica(#[from] ReplicaError),
    /// The replica made no progress in time.
    #[error("the replica made no progress within {0:?}: is it running, on the same store?")]
    ReplicaStuck(Duration),
}

const BALANCES: GlobalId = GlobalId::User(1);
const AUDIT: GlobalId = GlobalId::User(2);

type DemoController = Controller<u64, DynBackend>;

fn balances_relation() -> RelationDesc {
    RelationDesc::empty()
        .with_column("account", ScalarType::Int64.nullable(false))
        .with_column("balance", ScalarType::Int64.nullable(false))
}

fn audit_relation() -> RelationDesc {
    RelationDesc::empty()
        .with_column("account", ScalarType::Int64.nullable(false))
        .with_column("note", ScalarType::String.nullable(false))
}

/// The balance of `account` after `tick` (deterministic churn).
fn balance(account: i64, tick: u64) -> i64 {
    let tick = i64::try_from(tick % 1_000_003).unwrap_or(0);
    100 + (account * 7 + tick * 13) % 50
}

fn balance_row(account: i64, tick: u64) -> Row {
    Row::pack([Datum::Int64(account), Datum::Int64(balance(account, tick))])
}

/// Runs the demo, writing a readable report to `out`.
///
/// # Errors
///
/// [`DemoError`] naming what failed.
pub async fn run(options: &DemoOptions, out: &mut impl Write) -> Result<(), DemoError> {
    if options.ticks < 2 || options.accounts < 1 {
        return Err(DemoError::Options(format!(
            "need at least 2 ticks and 1 account: ticks={} accounts={}",
            options.ticks, options.accounts
        )));
    }
    if options.replica.is_some() && options.backend.starts_with("memory:") {
        return Err(DemoError::Options(
            "a replica in another process cannot share a memory:// store: use postgres:// or s3://"
                .to_string(),
        ));
    }
    let backend = tidemark::open(&options.backend).await?;
    let config = ControllerConfig {
        parameters: StorageParameters {
            compaction_min_updates: Some(1),
            statistics_interval: Some(Duration::from_millis(100)),
            ..StorageParameters::default()
        },
        ..ControllerConfig::default()
    };
    // The replica section's replica: in this process, or over TCP.
    let (transport, listener): (Arc<dyn ReplicaTransport<u64>>, _) = match &options.replica {
        Some(_) => (TcpTransport::<u64>::new(TcpConfig::default()), None),
        None => {
            let transport = InProcessTransport::<u64>::new();
            let listener = transport.listen(IN_PROCESS_REPLICA);
            (transport, Some(listener))
        }
    };
    let mut controller = Controller::with_transport(backend, config, transport).await?;
    writeln!(out, "tidemark demo on {}", options.backend)?;
    writeln!(
        out,
        "  controller epoch {} (every start fences older controllers)",
        controller.epoch()
    )?;

    section(out, "1. tables")?;
    create_tables(&mut controller, out).await?;

    section(out, "2. appends at advancing times")?;
    let base = append_ticks(&mut controller, options, out).await?;
    let last = base + options.ticks - 1;

    section(out, "3. snapshots")?;
    writeln!(
        out,
        "  {:>8}  {:>5}  {:>13}",
        "as_of", "rows", "total balance"
    )?;
    let step = (options.ticks / 4).max(1);
    let mut as_ofs: Vec<u64> = (0..4).map(|i| base + i * step).collect();
    as_ofs.push(last);
    as_ofs.dedup();
    for as_of in as_ofs {
        let rows = controller.snapshot(BALANCES, as_of).await?;
        let total: i64 = rows
            .iter()
            .map(|(row, diff)| match row.unpack().get(1) {
                Some(Datum::Int64(balance)) => balance * diff,
                _ => 0,
            })
            .sum();
        writeln!(out, "  {as_of:>8}  {:>5}  {total:>13}", rows.len())?;
    }

    section(
        out,
        "4. read policy: balances may lag 10 behind writes, in steps of 5",
    )?;
    let shard = controller
        .collection(BALANCES)?
        .collection_metadata
        .data_shard;
    let usage_before = controller.backend().usage(shard).await?;
    let since_before = controller.collection(BALANCES)?.since();
    controller.set_read_policy(vec![(BALANCES, ReadPolicy::lag_writes_by(10, 5))]);
    let since_after = controller.collection(BALANCES)?.since();
    writeln!(
        out,
        "  since {} -> {} (upper {})",
        display_frontier(&since_before),
        display_frontier(&since_after),
        display_frontier(&controller.collection(BALANCES)?.write_frontier)
    )?;
    match controller.snapshot(BALANCES, base).await {
        Err(err) => writeln!(out, "  reading at {base} now fails: {err}")?,
        Ok(rows) => writeln!(out, "  reading at {base} still works ({} rows)", rows.len())?,
    }

    section(out, "5. compaction")?;
    controller.flush().await;
    let usage_after = controller.backend().usage(shard).await?;
    let backend_since = controller.backend().frontiers(shard).await?.since;
    writeln!(
        out,
        "  shard since {} ; stored updates {} -> {} ; bytes {} -> {}",
        display_frontier(&backend_since),
        usage_before.updates,
        usage_after.updates,
        usage_before.bytes,
        usage_after.bytes
    )?;
    if let Some(since) = frontier_time(&since_after) {
        let rows = controller.snapshot(BALANCES, since).await?;
        writeln!(
            out,
            "  a read at the since still sees all {} accounts",
            rows.len()
        )?;
    }

    section(out, "6. subscribe to the audit table")?;
    subscribe_demo(&mut controller, last, out).await?;

    section(out, "7. drop the audit table")?;
    let audit_shard = controller.collection(AUDIT)?.collection_metadata.data_shard;
    controller.drop_sources(vec![AUDIT])?;
    // The subscription's hold is released through process(); once no hold
    // remains the collection goes and its shard is finalized.
    while controller.collection(AUDIT).is_ok() {
        controller.ready().await;
        controller.process().await?;
    }
    controller.flush().await;
    let shards = controller.backend().list_shards().await?;
    writeln!(
        out,
        "  audit state gone: {} ; its shard finalized and reclaimed: {}",
        controller.collection(AUDIT).is_err(),
        !shards.contains(&audit_shard)
    )?;
    controller.try_reconcile_state().await?;

    section(
        out,
        "8. a storage instance: counter and auction ingestions and a file sink on a replica",
    )?;
    replica_demo(&mut controller, options, listener, out).await?;

    section(out, "summary")?;
    for (id, state) in controller.collections() {
        let usage = controller
            .backend()
            .usage(state.collection_metadata.data_shard)
            .await?;
        writeln!(
            out,
            "  {id}: since {} upper {} stored updates {} bytes {}",
            display_frontier(&state.since()),
            display_frontier(&state.write_frontier),
            usage.updates,
            usage.bytes
        )?;
    }
    Ok(())
}

const IN_PROCESS_REPLICA: &str = "in-process";
const INSTANCE: StorageInstanceId = StorageInstanceId(1);
const COUNTER: GlobalId = GlobalId::User(10);
const AUCTION: GlobalId = GlobalId::User(11);
const AUCTION_OUTPUTS: [(GlobalId, &str); 5] = [
    (GlobalId::User(12), "auctions"),
    (GlobalId::User(13), "bids"),
    (GlobalId::User(14), "users"),
    (GlobalId::User(15), "organizations"),
    (GlobalId::User(16), "accounts"),
];
const COUNTER_SINK: GlobalId = GlobalId::User(17);
const REPLICA_PATIENCE: Duration = Duration::from_secs(120);

fn ingestion(generator: LoadGenerator, exports: BTreeMap<GlobalId, String>) -> DataSource {
    DataSource::Ingestion(IngestionDescription {
        instance_id: INSTANCE,
        connection: SourceConnection::LoadGenerator {
            generator,
            tick: Duration::from_millis(10),
        },
        remap_collection_id: None,
        source_exports: exports,
    })
}

/// Runs an instance with a replica: a counter and an auction ingestion,
/// a file sink exporting the counter, until each has written `ticks`
/// ticks; prints what each did.
async fn replica_demo(
    controller: &mut DemoController,
    options: &DemoOptions,
    listener: Option<tidemark::controller::transport::ReplicaListener<u64>>,
    out: &mut impl Write,
) -> Result<(), DemoError> {
    let (location, serving) = match (&options.replica, listener) {
        (Some(address), _) => (address.clone(), None),
        (None, listener) => {
            let replica = Replica::<u64>::start(
                Arc::new(controller.backend().clone()),
                ReplicaConfig::single(2),
                tokio::runtime::Handle::current(),
            )?;
            let listener = listener.ok_or_else(|| {
                DemoError::Options("no in-process listener for the replica".to_string())
            })?;
            (
                IN_PROCESS_REPLICA.to_string(),
                Some(AbortOnDrop(tokio::spawn(replica.serve(listener)))),
            )
        }
    };
    let counter = LoadGenerator::Counter {
        max_cardinality: None,
    };
    let mut collections = vec![(
        COUNTER,
        CollectionDescription::new(
            Generator::relations(&counter)[0].1.clone(),
            ingestion(counter, BTreeMap::new()),
        ),
    )];
    let relations: BTreeMap<&str, RelationDesc> = Generator::relations(&LoadGenerator::Auction)
        .into_iter()
        .collect();
    let mut exports = BTreeMap::new();
    for (id, output) in AUCTION_OUTPUTS {
        exports.insert(id, output.to_string());
        collections.push((
            id,
            CollectionDescription::new(relations[output].clone(), DataSource::Other),
        ));
    }
    collections.push((
        AUCTION,
        CollectionDescription::new(
            Generator::relations(&LoadGenerator::Auction)[0].1.clone(),
            ingestion(LoadGenerator::Auction, exports),
        ),
    ));
    controller.create_instance(INSTANCE);
    controller.create_collections(collections).await?;
    let sink_dir = options.sink_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "tidemark-demo-sink-{}",
            uuid::Uuid::new_v4().simple()
        ))
    });
    let token = controller.prepare_export(COUNTER_SINK, COUNTER)?;
    let as_of = token.acquired_since().clone();
    let description = ExportDescription {
        from: COUNTER,
        from_desc: controller.collection(COUNTER)?.description.desc.clone(),
        connection: SinkConnection::File {
            path: sink_dir.clone(),
        },
        as_of: as_of.clone(),
        with_snapshot: true,
        instance_id: INSTANCE,
    };
    controller
        .create_exports(vec![(token, description)])
        .await?;
    let start = frontier_time(&controller.collection(COUNTER)?.write_frontier).unwrap_or(0);
    controller.connect_replica(INSTANCE, ClusterReplicaLocation::single(location.clone()));
    writeln!(
        out,
        "  replica {} ; counter {COUNTER}, auction {AUCTION} (exports {}), file sink {COUNTER_SINK} into {}",
        if serving.is_some() {
            "in this process (2 workers)".to_string()
        } else {
            format!("at {location}")
        },
        AUCTION_OUTPUTS
            .map(|(id, output)| format!("{id} {output}"))
            .join(", "),
        sink_dir.display()
    )?;
    let goal = start + options.ticks;
    let upper = |controller: &DemoController, id: GlobalId| -> u64 {
        let frontier = match controller.collection(id) {
            Ok(state) => state.write_frontier.clone(),
            Err(_) => controller
                .export(id)
                .map(|export| export.write_frontier.clone())
                .unwrap_or_default(),
        };
        frontier_time(&frontier).unwrap_or(0)
    };
    let waited = tokio::time::timeout(REPLICA_PATIENCE, async {
        let done = |controller: &DemoController| {
            upper(controller, COUNTER) >= goal
                && upper(controller, COUNTER_SINK) >= goal
                && controller.statistics(COUNTER).is_some()
                && controller.statistics(COUNTER_SINK).is_some()
                && AUCTION_OUTPUTS
                    .iter()
                    .all(|(id, _)| upper(controller, *id) >= goal)
        };
        while !done(controller) {
            tokio::select! {
                () = controller.ready() => controller.process().await?,
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        Ok::<_, DemoError>(())
    })
    .await;
    waited.map_err(|_| DemoError::ReplicaStuck(REPLICA_PATIENCE))??;
    let at = goal - 1;
    let values = controller.snapshot(COUNTER, at).await?;
    writeln!(
        out,
        "  counter: upper {} ; {} live values at {at} ; status {} ; {}",
        upper(controller, COUNTER),
        values.len(),
        controller.status(COUNTER).unwrap_or("-"),
        statistics_text(controller, COUNTER)
    )?;
    for (id, output) in AUCTION_OUTPUTS {
        let rows = controller.snapshot(id, at).await?;
        writeln!(
            out,
            "  auction {output:<13} {id}: upper {} ; {} rows at {at}",
            upper(controller, id),
            rows.len()
        )?;
    }
    writeln!(
        out,
        "  auction {AUCTION}: status {} ; {}",
        controller.status(AUCTION).unwrap_or("-"),
        statistics_text(controller, AUCTION)
    )?;
    let written = tidemark::replica::file_sink::read_committed::<u64>(&sink_dir)
        .map_err(|err| DemoError::Output(std::io::Error::other(err)))?;
    writeln!(
        out,
        "  file sink {COUNTER_SINK}: upper {} from as_of {} ; {} updates committed to {} ; status {}",
        upper(controller, COUNTER_SINK),
        display_frontier(&as_of),
        written.len(),
        sink_dir.display(),
        controller.status(COUNTER_SINK).unwrap_or("-")
    )?;
    writeln!(
        out,
        "  file sink {COUNTER_SINK}: {}",
        statistics_text(controller, COUNTER_SINK)
    )?;
    drop(serving);
    Ok(())
}

fn statistics_text(controller: &DemoController, id: GlobalId) -> String {
    controller.statistics(id).map_or_else(
        || "no statistics yet".to_string(),
        |statistics| {
            format!(
                "{} updates, {} bytes in {} messages",
                statistics.updates, statistics.bytes, statistics.messages
            )
        },
    )
}

/// Stops the in-process replica when the demo is done with it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn section(out: &mut impl Write, title: &str) -> std::io::Result<()> {
    writeln!(out)?;
    writeln!(out, "{title}")
}

async fn create_tables(
    controller: &mut DemoController,
    out: &mut impl Write,
) -> Result<(), DemoError> {
    let tables = vec![
        (BALANCES, CollectionDescription::table(balances_relation())),
        (AUDIT, CollectionDescription::table(audit_relation())),
    ];
    controller.create_collections(tables.clone()).await?;
    let leftovers = controller
        .collections()
        .any(|(_, state)| frontier_time(&state.write_frontier) != Some(0));
    if leftovers {
        // An earlier run on a durable backend: start from fresh shards.
        writeln!(
            out,
            "  found tables of an earlier run: dropping them and starting afresh"
        )?;
        controller.drop_sources(vec![BALANCES, AUDIT])?;
        controller.create_collections(tables).await?;
    }
    for (id, state) in controller.collections() {
        let columns: Vec<String> = state
            .description
            .desc
            .columns()
            .map(|(name, column)| format!("{name} {}", column.scalar_type))
            .collect();
        writeln!(
            out,
            "  {id} ({}) shard {} since {} upper {}",
            columns.join(", "),
            state.collection_metadata.data_shard,
            display_frontier(&state.since()),
            display_frontier(&state.write_frontier)
        )?;
    }
    Ok(())
}

/// Appends one batch per tick; returns the first tick's time.
async fn append_ticks(
    controller: &mut DemoController,
    options: &DemoOptions,
    out: &mut impl Write,
) -> Result<u64, DemoError> {
    let base = frontier_time(&controller.collection(BALANCES)?.write_frontier).unwrap_or(0);
    let mut updates_written = 0usize;
    for tick in 0..options.ticks {
        let time = base + tick;
        let mut balances = Vec::new();
        for account in 0..options.accounts {
            if tick > 0 {
                balances.push(Update::new(balance_row(account, tick - 1), time, -1));
            }
            balances.push(Update::new(balance_row(account, tick), time, 1));
        }
        let account = i64::try_from(tick).unwrap_or(0) % options.accounts;
        let note = Row::pack([
            Datum::Int64(account),
            Datum::String(&format!("balance set to {}", balance(account, tick))),
        ]);
        updates_written += balances.len() + 1;
        let done = controller.append(vec![
            (BALANCES, balances, time + 1),
            (AUDIT, vec![Update::new(note, time, 1)], time + 1),
        ])?;
        done.await.map_err(|_| StorageError::WriteTaskStopped)??;
    }
    // The new uppers reach the write frontiers through process().
    let upper = base + options.ticks;
    while frontier_time(&controller.collection(BALANCES)?.write_frontier) != Some(upper) {
        controller.ready().await;
        controller.process().await?;
    }
    writeln!(
        out,
        "  {} ticks x {} accounts: {updates_written} updates; every tick retracts each balance and inserts the new one",
        options.ticks, options.accounts
    )?;
    writeln!(out, "  upper of {BALANCES} and {AUDIT} now [{upper}]")?;
    Ok(base)
}

async fn subscribe_demo(
    controller: &mut DemoController,
    last: u64,
    out: &mut impl Write,
) -> Result<(), DemoError> {
    let mut subscription = controller.subscribe(AUDIT, last)?;
    let next_time = last + 1;
    let note = Row::pack([Datum::Int64(0), Datum::String("audited by the demo")]);
    let done = controller.append(vec![(
        AUDIT,
        vec![Update::new(note, next_time, 1)],
        next_time + 1,
    )])?;
    done.await.map_err(|_| StorageError::WriteTaskStopped)??;
    let mut progress_seen = 0;
    while let Some(event) = subscription.recv().await {
        match event? {
            SubscriptionEvent::Updates(updates) if updates.iter().all(|u| u.timestamp == last) => {
                writeln!(out, "  snapshot at {last}: {} rows", updates.len())?;
            }
            SubscriptionEvent::Updates(updates) => {
                for update in updates {
                    writeln!(
                        out,
                        "  {:+} {} at {}",
                        update.diff, update.row, update.timestamp
                    )?;
                }
            }
            SubscriptionEvent::Progress(upper) => {
                writeln!(out, "  progress {}", display_frontier(&upper))?;
                progress_seen += 1;
                if frontier_time(&upper).is_none_or(|time| time > next_time) || progress_seen > 3 {
                    break;
                }
            }
        }
    }
    drop(subscription);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn report(backend: &str, ticks: u64) -> String {
        let options = DemoOptions {
            backend: backend.to_string(),
            ticks,
            accounts: 4,
            replica: None,
            sink_dir: None,
        };
        let mut out = Vec::new();
        run(&options, &mut out).await.expect("demo runs");
        String::from_utf8(out).expect("utf-8 report")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn demo_shows_since_compaction_and_reclaim() {
        let text = report("memory://demo-test-first", 30).await;
        assert!(text.contains("since [0] -> [20] (upper [30])"), "{text}");
        assert!(
            text.contains("reading at 0 now fails: read before the since"),
            "{text}"
        );
        assert!(
            text.contains("its shard finalized and reclaimed: true"),
            "{text}"
        );
        let compaction = text
            .lines()
            .find(|line| line.contains("stored updates"))
            .expect("a compaction line");
        let counts: Vec<u64> = compaction
            .split("stored updates ")
            .nth(1)
            .and_then(|rest| rest.split(" ;").next())
            .expect("counts")
            .split(" -> ")
            .map(|count| count.trim().parse().expect("a count"))
            .collect();
        assert!(counts[1] < counts[0], "{compaction}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn demo_runs_again_on_the_same_storage() {
        report("memory://demo-test-again", 10).await;
        let text = report("memory://demo-test-again", 10).await;
        assert!(text.contains("controller epoch 2"), "{text}");
        assert!(text.contains("found tables of an earlier run"), "{text}");
    }

    #[tokio::test]
    async fn bad_options_and_urls_are_clear_errors() {
        let mut out = Vec::new();
        let options = DemoOptions {
            backend: "memory://demo-test-bad".to_string(),
            ticks: 1,
            accounts: 4,
            replica: None,
            sink_dir: None,
        };
        let err = run(&options, &mut out).await.unwrap_err();
        assert!(err.to_string().contains("ticks=1"), "{err}");
        let options = DemoOptions {
            backend: "nope://x".to_string(),
            ticks: 5,
            ..options
        };
        let err = run(&options, &mut out).await.unwrap_err();
        assert!(err.to_string().contains("unknown backend scheme"), "{err}");
    }
}
