//! Status history collections: the statuses of ingestions written
//! durably to the collection they name, once per change.

use futures::StreamExt;
use tidemark_backend_conformance::BackendFactory;
use tidemark_storage_types::description::status_history_relation;
use tidemark_storage_types::{CollectionDescription, DataSource, StorageError, StorageInstanceId};

use super::*;
use tidemark_storage_controller::{ClusterReplicaLocation, StorageResponse, SubscriptionEvent};

const INSTANCE: StorageInstanceId = StorageInstanceId(1);
const STATUS: GlobalId = GlobalId::User(30);
const INGESTION: GlobalId = GlobalId::User(31);

fn status_history() -> CollectionDescription<u64> {
    CollectionDescription::new(status_history_relation(), DataSource::StatusHistory)
}

fn reporting_ingestion() -> CollectionDescription<u64> {
    let mut description = ingestion(INSTANCE, None);
    description.status_collection_id = Some(STATUS);
    description
}

/// A controller with the status collection and the ingestion reporting to
/// it, its instance connected to a scripted replica at `address`.
async fn with_reporting_ingestion<F: BackendFactory>(
    factory: &F,
    address: &str,
) -> (TestController<F>, ScriptedReplica) {
    let (mut c, transport) = controller_with_transport(factory).await;
    let mut replica = ScriptedReplica::serve(&transport, address);
    c.create_instance(INSTANCE);
    c.connect_replica(INSTANCE, ClusterReplicaLocation::single(address));
    replica.accept().await;
    c.create_collections(vec![
        (STATUS, status_history()),
        (INGESTION, reporting_ingestion()),
    ])
    .await
    .unwrap();
    (c, replica)
}

/// Waits until the status collection holds `rows` rows.
async fn settle_rows<B: PersistBackend<u64>>(c: &mut Controller<u64, B>, rows: u64) {
    process_until(c, |c| {
        c.collection(STATUS)
            .is_ok_and(|state| state.write_frontier == frontier(rows))
    })
    .await;
}

/// `(id, status, error, replica)` of each status row, in time order.
fn fields(rows: &[(Row, i64)]) -> Vec<(String, String, Option<String>, Option<String>)> {
    let text = |datum: &Datum<'_>| match datum {
        Datum::String(text) => Some((*text).to_owned()),
        _ => None,
    };
    rows.iter()
        .map(|(row, diff)| {
            assert_eq!(*diff, 1);
            let datums = row.unpack();
            assert!(matches!(datums[0], Datum::Timestamp(micros) if micros > 0));
            (
                text(&datums[1]).expect("an id"),
                text(&datums[2]).expect("a status"),
                text(&datums[3]),
                text(&datums[4]),
            )
        })
        .collect()
}

/// The statuses of `rows` at times `0..n`, by reading each time's
/// difference from the previous one.
async fn statuses_in_order<B: PersistBackend<u64>>(
    c: &Controller<u64, B>,
    n: u64,
) -> Vec<(String, String, Option<String>, Option<String>)> {
    let mut seen: Vec<(Row, i64)> = Vec::new();
    let mut ordered = Vec::new();
    for time in 0..n {
        let snapshot = c.snapshot(STATUS, time).await.unwrap();
        let new: Vec<_> = snapshot
            .into_iter()
            .filter(|entry| !seen.contains(entry))
            .collect();
        assert_eq!(new.len(), 1, "one row per time: {new:?}");
        ordered.extend(fields(&new));
        seen.extend(new);
    }
    ordered
}

fn row_of(
    status: &str,
    error: Option<&str>,
    replica: Option<&str>,
) -> (String, String, Option<String>, Option<String>) {
    (
        INGESTION.to_string(),
        status.to_owned(),
        error.map(str::to_owned),
        replica.map(str::to_owned),
    )
}

/// The controller's `starting`, then each replica status that differs from
/// the previous: a repeated status adds no row.
pub async fn status_changes_are_written_once_each<F: BackendFactory>(factory: &F) {
    let (mut c, replica) = with_reporting_ingestion(factory, "statuses").await;
    replica.respond(StorageResponse::StatusUpdates(vec![(
        INGESTION,
        "running".into(),
    )]));
    replica.respond(StorageResponse::StatusUpdates(vec![(
        INGESTION,
        "running".into(),
    )]));
    replica.respond(StorageResponse::StatusUpdates(vec![(
        INGESTION,
        "stalled: disk full".into(),
    )]));
    process_until(&mut c, |c| {
        c.status(INGESTION) == Some("stalled: disk full")
    })
    .await;
    settle_rows(&mut c, 3).await;
    assert_eq!(
        statuses_in_order(&c, 3).await,
        vec![
            row_of("starting", None, None),
            row_of("running", None, Some("si1/0")),
            row_of("stalled", Some("disk full"), Some("si1/0")),
        ]
    );
    c.drop_sources(vec![INGESTION]).unwrap();
    settle_rows(&mut c, 4).await;
    assert_eq!(
        statuses_in_order(&c, 4).await[3],
        row_of("dropped", None, None)
    );
}

/// Status rows are durable: a restarted controller reads them back.
pub async fn status_rows_survive_a_restart<F: BackendFactory>(factory: &F) {
    let (mut a, replica) = with_reporting_ingestion(factory, "durable-statuses").await;
    replica.respond(StorageResponse::StatusUpdates(vec![(
        INGESTION,
        "running".into(),
    )]));
    settle_rows(&mut a, 2).await;
    drop(a);
    let mut b = controller(factory).await;
    b.create_collections(vec![(STATUS, status_history())])
        .await
        .unwrap();
    assert_eq!(b.collection(STATUS).unwrap().write_frontier, frontier(2));
    let rows = fields(&b.snapshot(STATUS, 1).await.unwrap());
    assert_eq!(rows.len(), 2);
    assert!(rows.contains(&row_of("running", None, Some("si1/0"))));
}

/// A subscription to the status collection streams each status row.
pub async fn status_rows_are_readable_by_subscribe<F: BackendFactory>(factory: &F) {
    let (mut c, replica) = with_reporting_ingestion(factory, "subscribed-statuses").await;
    let mut subscription = c.subscribe(STATUS, 0).unwrap();
    replica.respond(StorageResponse::StatusUpdates(vec![(
        INGESTION,
        "running".into(),
    )]));
    settle_rows(&mut c, 2).await;
    let mut rows = Vec::new();
    within_a_minute(
        async {
            while rows.len() < 2 {
                match subscription.next().await.expect("open").expect("no error") {
                    SubscriptionEvent::Updates(updates) => {
                        rows.extend(updates.into_iter().map(|update| (update.row, update.diff)))
                    }
                    SubscriptionEvent::Progress(_) => {}
                }
            }
        },
        "the status rows never arrived",
    )
    .await;
    assert_eq!(
        fields(&rows),
        vec![
            row_of("starting", None, None),
            row_of("running", None, Some("si1/0"))
        ]
    );
}

/// A replica whose connection is lost is recorded as stalled.
pub async fn lost_replica_is_recorded_as_stalled<F: BackendFactory>(factory: &F) {
    let (mut c, mut replica) = with_reporting_ingestion(factory, "lost-replica").await;
    replica.disconnect();
    settle_rows(&mut c, 2).await;
    assert_eq!(
        statuses_in_order(&c, 2).await[1],
        row_of("stalled", Some("replica disconnected"), None)
    );
}

/// A `status_collection_id` naming a collection that is not a status
/// history is refused, naming both.
pub async fn status_collection_id_naming_a_table_is_refused<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    c.create_instance(INSTANCE);
    let err = c
        .create_collections(vec![(STATUS, table()), (INGESTION, reporting_ingestion())])
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StorageError::NotAStatusCollection {
            id: INGESTION,
            status_collection: STATUS,
        }
    );
    assert_eq!(c.collections().count(), 0);
}

/// A status history with another relation is refused.
pub async fn status_history_with_another_relation_is_refused<F: BackendFactory>(factory: &F) {
    let mut c = controller(factory).await;
    let err = c
        .create_collections(vec![(
            STATUS,
            CollectionDescription::new(relation(), DataSource::StatusHistory),
        )])
        .await
        .unwrap_err();
    assert_eq!(err, StorageError::StatusRelationMismatch(STATUS));
    assert!(err.to_string().contains("occurred_at"));
}
