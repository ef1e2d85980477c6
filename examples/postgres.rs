//! The PostgreSQL backend end to end: a storage controller over a schema of
//! its own, a table written at advancing times, snapshots, a subscription,
//! reads that lag writes (so the backend compacts), and a second handle that
//! is woken by LISTEN/NOTIFY when the table advances.
//!
//! Needs a server. Run with
//! `TIDEMARK_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres?schema=tidemark_example \
//!  cargo run --example postgres --features postgres`
//! (that URL is also the default). Run it twice: the second run finds the
//! table the first one wrote and carries on from its upper.

use std::error::Error;
use std::time::Duration;

use tidemark::controller::{Controller, ControllerConfig, StorageController, SubscriptionEvent};
use tidemark::postgres::PostgresBackend;
use tidemark::types::{
    CollectionDescription, Datum, GlobalId, PersistBackend, ReadPolicy, RelationDesc, Row,
    ScalarType, StorageParameters, Update, display_frontier,
};
use timely::progress::Antichain;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres?schema=tidemark_example";

fn reading(sensor: i64, celsius: f64) -> Row {
    Row::pack([Datum::Int64(sensor), Datum::Float64(celsius)])
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let url = std::env::var("TIDEMARK_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.into());
    let backend = tidemark::open(&url).await?;
    println!(
        "opened the postgres backend (url parameters may set schema, pool_size, connect_timeout)"
    );
    let mut controller = Controller::new(backend, ControllerConfig::default()).await?;
    // Compact physically as soon as a shard holds a few updates.
    controller.update_configuration(StorageParameters {
        compaction_min_updates: Some(2),
        ..Default::default()
    });

    let readings = GlobalId::User(1);
    let desc = RelationDesc::empty()
        .with_column("sensor", ScalarType::Int64.nullable(false))
        .with_column("celsius", ScalarType::Float64.nullable(false));
    controller
        .create_collections(vec![(readings, CollectionDescription::table(desc))])
        .await?;
    let state = controller.collection(readings)?;
    let shard = state.collection_metadata.data_shard;
    let start = *state
        .write_frontier
        .elements()
        .first()
        .ok_or("the readings table is sealed")?;
    println!(
        "table {readings} is shard {shard}; it continues from upper [{start}] (0 on a fresh schema)"
    );

    // A second, independent handle on the same schema waits for the table
    // to pass `start + 2`; the controller's appends wake it through NOTIFY.
    let watcher = PostgresBackend::from_url(&url).await?;
    let waiting = tokio::spawn(async move {
        watcher
            .wait_for_upper_past(shard, &Antichain::from_elem(start + 2))
            .await
    });

    // Three ticks: sensor 1 moves from 20.5 to 21.0, sensor 2 appears.
    let ticks = [
        vec![(reading(1, 20.5), 1)],
        vec![(reading(1, 20.5), -1), (reading(1, 21.0), 1)],
        vec![(reading(2, 18.25), 1)],
    ];
    for (offset, changes) in ticks.into_iter().enumerate() {
        let time = start + offset as u64;
        let updates = changes
            .into_iter()
            .map(|(row, diff)| Update::new(row, time, diff))
            .collect();
        controller
            .append(vec![(readings, updates, time + 1)])?
            .await??;
        println!("appended at time {time}; upper is now [{}]", time + 1);
    }
    let woken_at = tokio::time::timeout(Duration::from_secs(30), waiting).await???;
    println!(
        "the second handle was woken: upper {}",
        display_frontier(&woken_at)
    );

    for as_of in [start, start + 2] {
        let rows = controller.snapshot(readings, as_of).await?;
        let shown: Vec<String> = rows
            .iter()
            .map(|(row, diff)| format!("{row}x{diff}"))
            .collect();
        println!("snapshot as of {as_of}: {}", shown.join(" "));
    }

    // Follow the table from its since: the snapshot, then each change.
    let since = *controller
        .collection(readings)?
        .since()
        .elements()
        .first()
        .ok_or("the readings table is no longer readable")?;
    let mut changes = controller.subscribe(readings, since)?;
    controller
        .append(vec![(
            readings,
            vec![Update::new(reading(2, 18.25), start + 3, -1)],
            start + 4,
        )])?
        .await??;
    while let Some(event) = changes.recv().await {
        match event? {
            SubscriptionEvent::Updates(updates) => {
                for update in updates {
                    println!(
                        "  subscription: time {} {} {:+}",
                        update.timestamp, update.row, update.diff
                    );
                }
            }
            SubscriptionEvent::Progress(upper) => {
                println!("  subscription progress: {}", display_frontier(&upper));
                if upper.elements().first().is_some_and(|t| *t >= start + 4) {
                    break;
                }
            }
        }
    }
    drop(changes);

    // Let reads trail writes by one tick: the since follows the upper and
    // the controller compacts the shard in Postgres.
    let usage_before = controller_backend_usage(&url, shard).await?;
    controller.set_read_policy(vec![(readings, ReadPolicy::step_back())]);
    for _ in 0..50 {
        if controller.collection(readings)?.since().elements() == [start + 3] {
            break;
        }
        tokio::time::timeout(Duration::from_millis(100), controller.ready())
            .await
            .ok();
        controller.process().await?;
    }
    controller.flush().await;
    let usage_after = controller_backend_usage(&url, shard).await?;
    println!(
        "since is now {}; stored updates {} -> {} ({} -> {} bytes)",
        display_frontier(&controller.collection(readings)?.since()),
        usage_before.updates,
        usage_after.updates,
        usage_before.bytes,
        usage_after.bytes
    );

    let separator = if url.contains('?') { '&' } else { '?' };
    match tidemark::open(&format!("{url}{separator}shcema=typo")).await {
        Ok(_) => return Err("an unknown url parameter must be rejected".into()),
        Err(err) => println!("an unknown url parameter is rejected: {err}"),
    }
    Ok(())
}

/// The shard's stored size, read through a handle of its own.
async fn controller_backend_usage(
    url: &str,
    shard: tidemark::types::ShardId,
) -> Result<tidemark::types::ShardUsage, Box<dyn Error>> {
    let backend = PostgresBackend::from_url(url).await?;
    Ok(PersistBackend::<u64>::usage(&backend, shard).await?)
}
