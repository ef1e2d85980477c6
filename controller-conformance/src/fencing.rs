//! Fenced data writes: once a newer controller has opened on the same
//! storage, no table append of an older one lands, not even one that was
//! already past the older controller's own fence check.

use tidemark_backend_conformance::BackendFactory;
use tidemark_storage_types::PersistBackend;

use super::*;

/// Controller A appends to a table with appends in flight when controller
/// B opens on the same storage; A keeps submitting afterwards. From the
/// moment B has opened, the table's shard never moves again: none of A's
/// appends, in flight or later, lands after B opened.
pub async fn old_controller_appends_do_not_land_after_a_new_one_opens<F: BackendFactory>(
    factory: &F,
) {
    const IN_FLIGHT: u64 = 8;
    const AFTER: u64 = 4;
    let mut a = controller(factory).await;
    a.create_collections(vec![(user(1), table())])
        .await
        .unwrap();
    append_and_settle(&mut a, user(1), vec![update(1, "settled", 0, 1)], 1).await;
    let shard = a
        .collection(user(1))
        .unwrap()
        .collection_metadata
        .data_shard;
    let mut receivers = Vec::new();
    for time in 1..=IN_FLIGHT {
        if let Ok(receiver) = a.append(vec![(
            user(1),
            vec![update(2, "racing", time, 1)],
            time + 1,
        )]) {
            receivers.push(receiver);
        }
    }
    let b = controller(factory).await;
    assert!(b.epoch() > a.epoch());
    let raw = factory.open_handle().await;
    let upper_when_b_opened = raw.frontiers(shard).await.unwrap().upper;
    for time in IN_FLIGHT + 1..=IN_FLIGHT + AFTER {
        if let Ok(receiver) = a.append(vec![(user(1), vec![update(3, "late", time, 1)], time + 1)])
        {
            receivers.push(receiver);
        }
    }
    for receiver in receivers {
        // Each resolves, landed (before B opened) or refused: no hang.
        let _ = within_a_minute(receiver, "an old controller's append never resolved").await;
    }
    assert_eq!(
        raw.frontiers(shard).await.unwrap().upper,
        upper_when_b_opened,
        "an old controller's append landed after the new controller opened"
    );
    drop(b);
}
