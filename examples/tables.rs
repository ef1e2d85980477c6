//! Tables in code: create two tables, append at advancing times, read
//! snapshots, let reads lag writes, follow changes, and drop a table.
//!
//! Runs on the in-memory backend with no services:
//! `cargo run --example tables` (or pass a backend URL as the argument).

use std::error::Error;

use tidemark::controller::{Controller, ControllerConfig, StorageController, SubscriptionEvent};
use tidemark::types::{
    CollectionDescription, Datum, GlobalId, ReadPolicy, RelationDesc, Row, ScalarType, Update,
    display_frontier,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://tables-example".into());
    let backend = tidemark::open(&url).await?;
    let mut controller = Controller::new(backend, ControllerConfig::default()).await?;

    // Two tables: the controller writes them through `append`.
    let orders = GlobalId::User(10);
    let customers = GlobalId::User(11);
    let orders_desc = RelationDesc::empty()
        .with_column("order", ScalarType::Int64.nullable(false))
        .with_column("item", ScalarType::String.nullable(false));
    let customers_desc = RelationDesc::empty()
        .with_column("customer", ScalarType::Int64.nullable(false))
        .with_column("name", ScalarType::String.nullable(true));
    controller
        .create_collections(vec![
            (orders, CollectionDescription::table(orders_desc)),
            (customers, CollectionDescription::table(customers_desc)),
        ])
        .await?;
    let start = controller.collection(orders)?.write_frontier.elements()[0];

    // Time `start`: two orders and a customer; time `start + 1`: one order
    // cancelled. Each append names the new upper and returns once the
    // write is durable.
    let order = |id: i64, item: &str| Row::pack([Datum::Int64(id), Datum::String(item)]);
    controller
        .append_durable(vec![
            (
                orders,
                vec![
                    Update::new(order(1, "kettle"), start, 1),
                    Update::new(order(2, "teapot"), start, 1),
                ],
                start + 1,
            ),
            (
                customers,
                vec![Update::new(
                    Row::pack([Datum::Int64(7), Datum::Null]),
                    start,
                    1,
                )],
                start + 1,
            ),
        ])
        .await?;
    controller
        .append_durable(vec![(
            orders,
            vec![Update::new(order(2, "teapot"), start + 1, -1)],
            start + 2,
        )])
        .await?;

    // Snapshots at both times.
    for as_of in [start, start + 1] {
        let rows = controller.snapshot(orders, as_of).await?;
        println!("orders at {as_of}: {rows:?}");
    }

    // A bad row is an error naming the column, not a panic.
    let bad = controller
        .append_durable(vec![(
            customers,
            vec![Update::new(
                Row::pack([Datum::Null, Datum::Null]),
                start + 2,
                1,
            )],
            start + 3,
        )])
        .await;
    println!("appending a null customer id: {}", bad.unwrap_err());

    // Reads may lag writes by one tick; new uppers arrive through process().
    controller.set_read_policy(vec![(orders, ReadPolicy::step_back())]);
    while controller.collection(orders)?.write_frontier.elements() != [start + 2] {
        controller.ready().await;
        controller.process().await?;
    }
    println!(
        "orders since {} upper {}",
        display_frontier(&controller.collection(orders)?.since()),
        display_frontier(&controller.collection(orders)?.write_frontier)
    );

    // Follow the orders table from its since: the snapshot, then changes.
    let since = controller.collection(orders)?.since().elements()[0];
    let mut changes = controller.subscribe(orders, since)?;
    controller
        .append_durable(vec![(
            orders,
            vec![Update::new(order(3, "cups"), start + 2, 1)],
            start + 3,
        )])
        .await?;
    while let Some(event) = changes.recv().await {
        match event? {
            SubscriptionEvent::Updates(updates) => println!("  updates: {updates:?}"),
            SubscriptionEvent::Progress(upper) => {
                println!("  progress: {}", display_frontier(&upper));
                if upper
                    .elements()
                    .first()
                    .is_some_and(|time| *time > start + 2)
                {
                    break;
                }
            }
        }
    }
    drop(changes);

    // Dropping a table: once nothing reads it, its shard is finalized.
    controller.drop_sources(vec![customers])?;
    controller.flush().await;
    println!(
        "customers dropped: {}",
        controller.collection(customers).is_err()
    );
    Ok(())
}
