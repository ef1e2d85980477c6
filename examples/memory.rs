//! The memory backend end to end: open a shard through `memory://example`,
//! append at advancing times, read snapshots and changes, downgrade since,
//! compact, and finalize.
//!
//! Run with `cargo run --example memory`.

use std::error::Error;
use tidemark_storage_types::WriteFence;

use tidemark::types::{
    Datum, IdempotencyToken, PersistBackend, Row, ShardId, Update, display_frontier,
};
use timely::progress::Antichain;

/// An inventory row: (item, warehouse).
fn stock(item: &str, warehouse: &str) -> Row {
    Row::pack([Datum::String(item), Datum::String(warehouse)])
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let writer = tidemark::open("memory://example").await?;
    // A second handle on the same name sees the same shards.
    let reader = tidemark::open("memory://example").await?;

    let shard = ShardId::new();
    let frontiers = writer.open(shard).await?;
    println!(
        "opened shard {shard}: since={} upper={}",
        display_frontier(&frontiers.since),
        display_frontier(&frontiers.upper)
    );

    // Ten appends at times 0..10: every item moves between warehouses, so
    // old positions are retracted and new ones inserted.
    let items = ["anchor", "buoy", "chain", "davit", "ensign"];
    let warehouses = ["north", "south", "east"];
    let mut upper = 0u64;
    for time in 0..10u64 {
        let mut updates = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let here = warehouses[(index + time as usize) % warehouses.len()];
            if time > 0 {
                let before = warehouses[(index + time as usize - 1) % warehouses.len()];
                updates.push(Update::new(stock(item, before), time, -1));
            }
            updates.push(Update::new(stock(item, here), time, 1));
        }
        let appended = updates.len();
        let result = writer
            .compare_and_append(
                shard,
                updates,
                Antichain::from_elem(upper),
                Antichain::from_elem(time + 1),
                IdempotencyToken::new(),
                WriteFence::Unfenced,
            )
            .await?;
        if let Err(mismatch) = result {
            return Err(format!("lost a race that cannot happen here: {mismatch}").into());
        }
        upper = time + 1;
        println!("appended {appended:>2} updates at time {time}, upper is now [{upper}]");
    }

    // A write through one handle is visible through the other.
    for as_of in [0, 4, 8] {
        let snapshot = reader.snapshot(shard, &as_of).await?;
        let listed: Vec<String> = snapshot
            .iter()
            .map(|(row, diff)| format!("{row}x{diff}"))
            .collect();
        println!("snapshot as of {as_of}: {}", listed.join(" "));
    }

    let changes = reader
        .fetch(shard, &Antichain::from_elem(8), &Antichain::from_elem(10))
        .await?;
    println!("changes in [8, 10):");
    for update in &changes {
        println!(
            "  time {} {} {:+}",
            update.timestamp, update.row, update.diff
        );
    }

    let usage = writer.usage(shard).await?;
    println!(
        "stored before compaction: {} updates, {} bytes",
        usage.updates, usage.bytes
    );

    let since = writer
        .downgrade_since(shard, &Antichain::from_elem(9), WriteFence::Unfenced)
        .await?;
    println!("downgraded since to {}", display_frontier(&since));
    let stats = writer.compact(shard).await?;
    println!(
        "compacted: {} -> {} updates, {} -> {} bytes",
        stats.updates_before, stats.updates_after, stats.bytes_before, stats.bytes_after
    );
    let after = reader.snapshot(shard, &9).await?;
    println!(
        "snapshot as of 9 after compaction still has {} rows",
        after.len()
    );
    match reader.snapshot(shard, &4).await {
        Ok(_) => return Err("a snapshot before since must be rejected".into()),
        Err(err) => println!("snapshot as of 4 is now rejected: {err}"),
    }

    writer.finalize(shard).await?;
    let frontiers = reader.open(shard).await?;
    println!(
        "finalized: reopening reports since={} upper={}; listed shards: {:?}",
        display_frontier(&frontiers.since),
        display_frontier(&frontiers.upper),
        reader.list_shards().await?
    );

    match tidemark::open("memory://example?durable=true").await {
        Ok(_) => return Err("an unknown parameter must be rejected".into()),
        Err(err) => println!("unknown parameters are rejected: {err}"),
    }
    Ok(())
}
