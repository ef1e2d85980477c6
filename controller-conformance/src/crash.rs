//! A writer process killed (`SIGKILL`) in the middle of a stream of
//! atomic multi-table calls: after recovery, every call is wholly present
//! on all its tables or wholly absent, and every acknowledged call is
//! present, once.
//!
//! A backend's test binary runs [`killed_writers_leave_each_call_whole`],
//! which starts the same binary again as the writer (through `spawn`,
//! which names the writer test and passes the store's coordinates), and
//! the writer test calls [`write_atomic_calls_until_killed`]. Only for
//! stores that outlive a process (PostgreSQL, S3): an in-process store dies
//! with its writer.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tidemark_backend_conformance::BackendFactory;

use super::*;

/// The tables every call chooses from.
const TABLES: u64 = 3;
/// How many calls the writer keeps submitted before awaiting them.
const BURST: u64 = 8;
/// The writer stops by itself after this many calls ...
const WRITER_MAX_CALLS: u64 = 5_000;
/// ... or after this long, whichever comes first.
const WRITER_MAX_TIME: Duration = Duration::from_secs(60);
/// How many times a writer is started and killed.
const KILLS: u64 = 10;
/// What the writer prints after each acknowledged call, then its number.
const ACKED: &str = "tidemark-atomic-writer acked ";

/// The tables call `k` names (a subset of 1 to 3, varying with `k`).
fn tables_of(k: u64) -> Vec<GlobalId> {
    let mask = (k % 7) + 1;
    (0..TABLES)
        .filter(|table| mask & (1 << table) != 0)
        .map(|table| user(table + 1))
        .collect()
}

/// The row call `k` writes on each of its tables.
fn row_of(k: u64) -> Row {
    row(i64::try_from(k).expect("call numbers fit"), "atomic")
}

/// A controller on the factory's storage with tables `u1..=u3` (created or
/// re-attached), and the number of the next call: no call before it can
/// still land on any table, as it is at least every table's upper.
async fn open_tables<F: BackendFactory>(factory: &F) -> (TestController<F>, u64) {
    let mut c = controller(factory).await;
    c.create_collections((1..=TABLES).map(|n| (user(n), table())).collect())
        .await
        .expect("the tables exist");
    let next = (1..=TABLES)
        .map(|n| {
            let upper = &c.collection(user(n)).expect("created").write_frontier;
            *upper.as_option().expect("a table is not sealed")
        })
        .max()
        .unwrap_or(0);
    (c, next)
}

/// The writer: appends calls numbered from where the tables are, `BURST`
/// at a time (queued together, so they commit in groups), printing each
/// acknowledged call's number, until killed (or, unkilled, after
/// `WRITER_MAX_CALLS` calls or `WRITER_MAX_TIME`).
pub async fn write_atomic_calls_until_killed<F: BackendFactory>(factory: &F) {
    let started = Instant::now();
    let (mut c, first) = open_tables(factory).await;
    let mut k = first;
    while k < first + WRITER_MAX_CALLS && started.elapsed() < WRITER_MAX_TIME {
        let receivers: Vec<(u64, _)> = (k..k + BURST)
            .map(|call| {
                let commands = tables_of(call)
                    .into_iter()
                    .map(|id| (id, vec![Update::new(row_of(call), call, 1)], call + 1))
                    .collect();
                (call, c.append(commands).expect("append accepted"))
            })
            .collect();
        k += BURST;
        for (call, receiver) in receivers {
            let answer = within_a_minute(receiver, "append never resolved")
                .await
                .expect("append channel open");
            assert_eq!(answer, Ok(()), "call {call}");
            println!("{ACKED}{call}");
        }
    }
}

/// Starts the writer (`spawn()`) `KILLS` times, kills each by its pid with
/// `SIGKILL` after it acknowledged a few calls (a different number each
/// time), and recovers after each: a new controller re-attaches the tables
/// and every call is wholly present or absent, every acknowledged one
/// present, none twice.
pub async fn killed_writers_leave_each_call_whole<F: BackendFactory>(
    factory: &F,
    spawn: impl Fn() -> Command,
) {
    let mut acked_ever: Vec<u64> = Vec::new();
    for round in 0..KILLS {
        let wanted_acks = 1 + (round * 5) % 13;
        let mut child = spawn()
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the writer starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines, mut acks) = tokio::sync::mpsc::unbounded_channel();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(call) = line.strip_prefix(ACKED) {
                    let call: u64 = call.trim().parse().expect("a call number");
                    if lines.send(call).is_err() {
                        return;
                    }
                }
            }
        });
        let mut acked = Vec::new();
        let wait = async {
            while (acked.len() as u64) < wanted_acks {
                match acks.recv().await {
                    Some(call) => acked.push(call),
                    None => break,
                }
            }
        };
        within_a_minute(wait, "the writer acknowledged too few calls").await;
        // `Child::kill` sends SIGKILL to the child's pid.
        let pid = child.id();
        child.kill().expect("the writer is killed");
        let status = child.wait().expect("the killed writer is reaped");
        assert!(
            !status.success(),
            "round {round}: writer {pid} was killed, not finished"
        );
        reader.join().expect("the output reader ends");
        while let Ok(call) = acks.try_recv() {
            acked.push(call);
        }
        assert!(!acked.is_empty(), "round {round}: no call was acknowledged");
        acked_ever.extend(acked);
        check_each_call_whole(factory, &acked_ever, round).await;
    }
}

/// Re-attaches the tables with a new controller and checks every call
/// number up to the tables' uppers: wholly present or absent, acknowledged
/// ones present, none twice.
async fn check_each_call_whole<F: BackendFactory>(factory: &F, acked: &[u64], round: u64) {
    let (c, next) = open_tables(factory).await;
    let mut present: BTreeMap<u64, Vec<GlobalId>> = BTreeMap::new();
    for n in 1..=TABLES {
        let id = user(n);
        let upper = *c
            .collection(id)
            .expect("re-attached")
            .write_frontier
            .as_option()
            .expect("a table is not sealed");
        if upper == 0 {
            continue;
        }
        let rows = within_a_minute(c.snapshot(id, upper - 1), "snapshot never returned")
            .await
            .expect("the recovered table reads");
        for (seen, diff) in rows {
            let k = (0..next)
                .find(|k| row_of(*k) == seen)
                .unwrap_or_else(|| panic!("round {round}: {id} holds a row no call wrote"));
            assert_eq!(diff, 1, "round {round}: call {k} is on {id} {diff} times");
            present.entry(k).or_default().push(id);
        }
    }
    for k in 0..next {
        let tables = present.get(&k).cloned().unwrap_or_default();
        assert!(
            tables.is_empty() || tables == tables_of(k),
            "round {round}: call {k} is only partly present: on {tables:?} of {:?}",
            tables_of(k)
        );
    }
    for k in acked {
        assert!(
            present.contains_key(k),
            "round {round}: acknowledged call {k} is absent"
        );
    }
}
