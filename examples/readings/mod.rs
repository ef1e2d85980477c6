//! The sensor-readings walk-through the Postgres and S3 examples share: a
//! controller over a backend opened from a URL, a table written at
//! advancing times, snapshots, a subscription, and reads that trail writes
//! so the controller compacts. Each example adds what its backend shows.

use std::error::Error;
use std::time::Duration;

use tidemark::DynBackend;
use tidemark::controller::{Controller, ControllerConfig, StorageController, SubscriptionEvent};
use tidemark::types::{
    CollectionDescription, Datum, GlobalId, PersistBackend, ReadPolicy, RelationDesc, Row,
    ScalarType, ShardId, StorageParameters, Update, display_frontier,
};
use timely::progress::Antichain;

/// The controller the examples drive.
pub type ExampleController = Controller<u64, DynBackend>;

/// The readings table.
pub const READINGS: GlobalId = GlobalId::User(1);

/// A `(sensor, celsius)` row.
pub fn reading(sensor: i64, celsius: f64) -> Row {
    Row::pack([Datum::Int64(sensor), Datum::Float64(celsius)])
}

/// A controller over the backend `url` names, compacting physically as soon
/// as a shard holds a few updates.
pub async fn open_controller(url: &str) -> Result<ExampleController, Box<dyn Error>> {
    let backend = tidemark::open(url).await?;
    let mut controller = Controller::new(backend, ControllerConfig::default()).await?;
    controller.update_configuration(StorageParameters {
        compaction_min_updates: Some(2),
        ..Default::default()
    });
    Ok(controller)
}

/// Creates (or reattaches) the readings table; returns its shard and its
/// upper, where this run continues.
pub async fn create_readings_table(
    controller: &mut ExampleController,
) -> Result<(ShardId, u64), Box<dyn Error>> {
    let desc = RelationDesc::empty()
        .with_column("sensor", ScalarType::Int64.nullable(false))
        .with_column("celsius", ScalarType::Float64.nullable(false));
    controller
        .create_collections(vec![(READINGS, CollectionDescription::table(desc))])
        .await?;
    let state = controller.collection(READINGS)?;
    let start = *state
        .write_frontier
        .elements()
        .first()
        .ok_or("the readings table is sealed")?;
    Ok((state.collection_metadata.data_shard, start))
}

/// Three ticks from `start`: sensor 1 moves from 20.5 to 21.0, sensor 2
/// appears. Each append returns once it is durable.
async fn append_ticks(
    controller: &mut ExampleController,
    start: u64,
) -> Result<(), Box<dyn Error>> {
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
            .append_durable(vec![(READINGS, updates, time + 1)])
            .await?;
        println!("appended at time {time}; upper is now [{}]", time + 1);
    }
    Ok(())
}

/// Appends the ticks while a second, independent handle on `url` waits
/// for the table's upper to pass `start + 2`; returns the upper that woke
/// it.
pub async fn append_ticks_watched(
    controller: &mut ExampleController,
    url: &str,
    shard: ShardId,
    start: u64,
) -> Result<Antichain<u64>, Box<dyn Error>> {
    let watcher = tidemark::open(url).await?;
    let waiting = tokio::spawn(async move {
        watcher
            .wait_for_upper_past(shard, &Antichain::from_elem(start + 2))
            .await
    });
    append_ticks(controller, start).await?;
    Ok(tokio::time::timeout(Duration::from_secs(30), waiting).await???)
}

/// Snapshots at two times, then follows the table from its since: the
/// snapshot, then the change appended at `start + 3`.
pub async fn read_and_follow(
    controller: &mut ExampleController,
    start: u64,
) -> Result<(), Box<dyn Error>> {
    for as_of in [start, start + 2] {
        let rows = controller.snapshot(READINGS, as_of).await?;
        let shown: Vec<String> = rows
            .iter()
            .map(|(row, diff)| format!("{row}x{diff}"))
            .collect();
        println!("snapshot as of {as_of}: {}", shown.join(" "));
    }

    let since = *controller
        .collection(READINGS)?
        .since()
        .elements()
        .first()
        .ok_or("the readings table is no longer readable")?;
    let mut changes = controller.subscribe(READINGS, since)?;
    let retraction = Update::new(reading(2, 18.25), start + 3, -1);
    controller
        .append_durable(vec![(READINGS, vec![retraction], start + 4)])
        .await?;
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
    Ok(())
}

/// Lets reads trail writes by one tick: the since follows the upper (to
/// `start + 3`) and the controller compacts the shard.
pub async fn trail_reads_by_one_tick(
    controller: &mut ExampleController,
    start: u64,
) -> Result<(), Box<dyn Error>> {
    controller.set_read_policy(vec![(READINGS, ReadPolicy::step_back())]);
    for _ in 0..50 {
        if controller.collection(READINGS)?.since().elements() == [start + 3] {
            break;
        }
        tokio::time::timeout(Duration::from_millis(100), controller.ready())
            .await
            .ok();
        controller.process().await?;
    }
    controller.flush().await;
    println!(
        "since is now {}",
        display_frontier(&controller.collection(READINGS)?.since())
    );
    Ok(())
}

/// Checks that `url` with the misspelled parameter `typo` added is refused.
pub async fn unknown_parameter_is_rejected(url: &str, typo: &str) -> Result<(), Box<dyn Error>> {
    let separator = if url.contains('?') { '&' } else { '?' };
    match tidemark::open(&format!("{url}{separator}{typo}=1")).await {
        Ok(_) => Err("an unknown url parameter must be rejected".into()),
        Err(err) => {
            println!("an unknown url parameter is rejected: {err}");
            Ok(())
        }
    }
}
