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

mod readings;

use std::error::Error;

use tidemark::s3::S3Backend;
use tidemark::types::{PersistBackend, display_frontier};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let url = std::env::var("TIDEMARK_S3_URL").map_err(
        |_| "set TIDEMARK_S3_URL to s3://BUCKET/PREFIX?endpoint=...&region=...&path_style=true",
    )?;
    // Opening checks that the bucket exists, that the credentials work and
    // that the store enforces conditional writes.
    let mut controller = readings::open_controller(&url).await?;
    println!("opened the s3 backend at {url}");
    let (shard, start) = readings::create_readings_table(&mut controller).await?;
    println!(
        "table {} is shard {shard}; it continues from upper [{start}]",
        readings::READINGS
    );

    // A second, independent handle polls the shard's state until the table
    // passes `start + 2`. Each tick is one part object and one state
    // compare-and-swap.
    let woken_at = readings::append_ticks_watched(&mut controller, &url, shard, start).await?;
    println!(
        "the second handle saw the upper pass [{}]: {}",
        start + 2,
        display_frontier(&woken_at)
    );

    readings::read_and_follow(&mut controller, start).await?;

    // The controller compacts the shard by size-tiered merges of its
    // batches.
    let inspector = S3Backend::from_url(&url).await?;
    let usage_before = PersistBackend::<u64>::usage(&inspector, shard).await?;
    let parts_before = inspector.part_keys(shard).await?.len();
    readings::trail_reads_by_one_tick(&mut controller, start).await?;
    let usage_after = PersistBackend::<u64>::usage(&inspector, shard).await?;
    println!(
        "stored updates {} -> {}, part objects {} -> {}",
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
        inspector.config().grace_period()
    );

    readings::unknown_parameter_is_rejected(&url, "regoin").await
}
