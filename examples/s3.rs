//! The S3 backend end to end: a storage controller over a bucket prefix, a
//! table written at advancing times, snapshots, a subscription, a second
//! handle that sees the writes by polling the shard state, reads that lag
//! writes (so the shard is compacted), garbage collection, and a rejected
//! url parameter.
//!
//! Needs an S3-compatible server with conditional writes and an existing
//! bucket; credentials come from the standard chain (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, profiles, ...). For a local server:
//!
//! ```text
//! TIDEMARK_S3_URL='s3://tidemark-example/demo?endpoint=http://127.0.0.1:9000&region=us-east-1&path_style=true' \
//! AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test \
//!   cargo run --example s3 --features s3
//! ```
//!
//! Run it twice: the second run finds the table the first one wrote and
//! carries on from its upper.

use std::error::Error;
use std::time::Duration;

use tidemark::controller::{Controller, ControllerConfig, StorageController, SubscriptionEvent};
use tidemark::s3::S3Backend;
use tidemark::types::{
    CollectionDescription, Datum, GlobalId, PersistBackend, ReadPolicy, RelationDesc, Row,
    ScalarType, StorageParameters, Update, display_frontier,
};
use timely::progress::Antichain;

fn reading(sensor: i64, celsius: f64) -> Row {
    Row::pack([Datum::Int64(sensor), Datum::Float64(celsius)])
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let url = std::env::var("TIDEMARK_S3_URL").map_err(
        |_| "set TIDEMARK_S3_URL to s3://BUCKET/PREFIX?endpoint=...&region=...&path_style=true",
    )?;
    // Opening checks that the bucket exists, that the credentials work and
    // that the store enforces conditional writes.
    let backend = tidemark::open(&url).await?;
    println!("opened the s3 backend at {url}");
    let mut controller = Controller::new(backend, ControllerConfig::default()).await?;
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
    println!("table {readings} is shard {shard}; it continues from upper [{start}]");

    // A second, independent handle polls the shard's state until the table
    // passes `start + 2`.
    let watcher = S3Backend::from_url(&url).await?;
    let waiting = tokio::spawn(async move {
        watcher
            .wait_for_upper_past(shard, &Antichain::from_elem(start + 2))
            .await
    });

    // Three ticks, each one part object and one state compare-and-swap.
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
        "the second handle saw the upper pass [{}]: {}",
        start + 2,
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
    // the controller compacts the shard (size-tiered merges of its batches).
    let inspector = S3Backend::from_url(&url).await?;
    let usage_before = PersistBackend::<u64>::usage(&inspector, shard).await?;
    let parts_before = inspector.part_keys(shard).await?.len();
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
    let usage_after = PersistBackend::<u64>::usage(&inspector, shard).await?;
    println!(
        "since is now {}; stored updates {} -> {}, part objects {} -> {}",
        display_frontier(&controller.collection(readings)?.since()),
        usage_before.updates,
        usage_after.updates,
        parts_before,
        inspector.part_keys(shard).await?.len()
    );

    // Replaced parts stay for the grace period (readers may still hold the
    // older state); gc deletes them, and any left by failed writers, after it.
    let gc = inspector.gc().await?;
    println!(
        "gc scanned {} shards and deleted {} part objects (replaced parts wait {:?})",
        gc.shards_scanned,
        gc.parts_deleted,
        inspector.config().grace_period
    );

    let separator = if url.contains('?') { '&' } else { '?' };
    match tidemark::open(&format!("{url}{separator}regoin=typo")).await {
        Ok(_) => return Err("an unknown url parameter must be rejected".into()),
        Err(err) => println!("an unknown url parameter is rejected: {err}"),
    }
    Ok(())
}
