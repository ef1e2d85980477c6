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

mod readings;

use std::error::Error;

use tidemark::postgres::PostgresBackend;
use tidemark::types::{PersistBackend, ShardId, ShardUsage, display_frontier};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres?schema=tidemark_example";

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let url = std::env::var("TIDEMARK_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.into());
    let mut controller = readings::open_controller(&url).await?;
    println!(
        "opened the postgres backend (url parameters may set schema, pool_size, connect_timeout)"
    );
    let (shard, start) = readings::create_readings_table(&mut controller).await?;
    println!(
        "table {} is shard {shard}; it continues from upper [{start}] (0 on a fresh schema)",
        readings::READINGS
    );

    // A second, independent handle on the same schema waits for the table
    // to pass `start + 2`; the controller's appends wake it through NOTIFY.
    let woken_at = readings::append_ticks_watched(&mut controller, &url, shard, start).await?;
    println!(
        "the second handle was woken: upper {}",
        display_frontier(&woken_at)
    );

    readings::read_and_follow(&mut controller, start).await?;

    let usage_before = stored(&url, shard).await?;
    readings::trail_reads_by_one_tick(&mut controller, start).await?;
    let usage_after = stored(&url, shard).await?;
    println!(
        "stored updates {} -> {} ({} -> {} bytes)",
        usage_before.updates, usage_after.updates, usage_before.bytes, usage_after.bytes
    );

    readings::unknown_parameter_is_rejected(&url, "shcema").await
}

/// The shard's stored size, read through a handle of its own.
async fn stored(url: &str, shard: ShardId) -> Result<ShardUsage, Box<dyn Error>> {
    let backend = PostgresBackend::from_url(url).await?;
    Ok(PersistBackend::<u64>::usage(&backend, shard).await?)
}
