//! The export dataflow: a collection's shard written out by the file sink,
//! exactly once.
//!
//! ```text
//! ShardSource (every worker reads its share) --exchange--> FileSinkWriter (one worker) --> probe
//! ```
//!
//! - The writer runs on one worker (see
//!   [`worker_for`]), which opens the
//!   [`FileSink`] and learns its committed upper `U` (none before the
//!   first commit).
//! - Every worker reads the source shard from `as_of = max(initial as_of,
//!   the shard's since)`. The export's read hold keeps that at or before
//!   `U - 1`, so every update at a time `>= U` arrives at its own time.
//! - The writer keeps the updates from `U` on (before the first commit:
//!   from the as_of, or from just after it when `with_snapshot` is false),
//!   and whenever the source frontier `F` passes what is committed it
//!   commits the updates before `F` with `new_upper = F`. A restarted
//!   writer resumes at `U` and never emits an update twice.
//! - The writer's output capability follows the committed upper, so the
//!   probe at every worker reads the export's upper, which the replica
//!   reports: it moves the export's write frontier and so its read hold.
//!
//! A failure (opening or committing the sink, reading the source) stalls
//! the export with a status; nothing panics. The commit (a write and
//! fsyncs) runs on the writer's worker thread.

use std::rc::Rc;
use std::sync::Arc;

use tidemark_storage_controller::protocol::ExportCommand;
use tidemark_storage_dataflow::ShardSource;
use tidemark_storage_types::{Diff, PersistBackend, Row, SinkConnection};
use timely::PartialOrder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Probe;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::progress::Antichain;
use timely::worker::Worker;

use crate::ReplicaTimestamp;
use crate::file_sink::FileSink;
use crate::monitor::{Built, Monitor};
use crate::placement::worker_for;
use crate::worker::Context;

/// Builds the export's dataflow on this worker.
pub(crate) fn build<T, B>(
    worker: &mut Worker,
    context: &Context<B>,
    command: &ExportCommand<T>,
) -> Built<T>
where
    T: ReplicaTimestamp,
    B: PersistBackend<T>,
{
    let monitor = Monitor::new();
    let committer = worker_for(command.id, worker.peers());
    let placed = committer == worker.index();
    let initial_as_of = command
        .initial_as_of
        .elements()
        .first()
        .or(command.description.as_of.elements().first())
        .copied();
    let path = match &command.description.connection {
        SinkConnection::File { path } => path.clone(),
        other => {
            monitor.fail(format!(
                "this replica cannot run the sink connection {other:?}"
            ));
            std::path::PathBuf::new()
        }
    };
    let with_snapshot = command.description.with_snapshot;

    // The shard's since, read once here: the source starts there if the
    // export's hold has moved past the initial as_of.
    let since = {
        let backend = Arc::clone(&context.backend);
        let shard = command.from_shard;
        context
            .runtime
            .block_on(async move { backend.frontiers(shard).await })
            .map(|frontiers| frontiers.since)
    };
    let as_of = match (initial_as_of, since) {
        (None, _) => {
            monitor.fail(format!(
                "export {} has no as_of (its collection is dropped)",
                command.id
            ));
            None
        }
        (Some(_), Ok(since)) if since.is_empty() => {
            monitor.fail(format!(
                "the collection export {} reads is finalized: shard={}",
                command.id, command.from_shard
            ));
            None
        }
        (Some(as_of), Ok(since)) => Some(
            since
                .elements()
                .first()
                .map_or(as_of, |since| if *since > as_of { *since } else { as_of }),
        ),
        (Some(as_of), Err(error)) => {
            monitor.fail(format!(
                "reading the frontiers of shard {} failed: {error}",
                command.from_shard
            ));
            Some(as_of)
        }
    };

    let probe = worker.dataflow::<T, _, _>(|scope| {
        let mut builder = OperatorBuilder::new("FileSinkWriter".to_string(), scope);
        let (_output, stream) = builder.new_output::<Vec<()>>();
        let input = match (as_of, monitor.error()) {
            (Some(as_of), None) => {
                let (collection, status) = ShardSource::new(
                    context.runtime.clone(),
                    Arc::clone(&context.backend),
                    command.from_shard,
                    as_of,
                )
                .build(scope);
                monitor.watch(status);
                Some(builder.new_input(
                    collection.inner,
                    Exchange::new(move |_: &(Row, T, Diff)| committer as u64),
                ))
            }
            _ => None,
        };
        let writer_monitor = Rc::clone(&monitor);
        builder.build(move |mut capabilities| {
            let mut capability = capabilities.pop();
            let monitor = writer_monitor;
            let mut writer = None;
            if placed && monitor.error().is_none() {
                match FileSink::<T>::open(&path) {
                    Ok(sink) => writer = Some(sink),
                    Err(error) => monitor.fail(format!("opening the file sink failed: {error}")),
                }
            }
            // Where the kept updates start, and what is committed so far.
            let mut lower = None;
            let mut committed = Antichain::new();
            if let (Some(sink), Some(as_of)) = (&writer, as_of) {
                match sink.committed_upper() {
                    Some(upper) => {
                        lower = upper.elements().first().copied();
                        committed = upper;
                    }
                    None => {
                        lower = if with_snapshot {
                            Some(as_of)
                        } else {
                            as_of.checked_step_forward()
                        };
                        committed = Antichain::from_elem(as_of);
                    }
                }
            }
            match (&mut capability, committed.elements().first()) {
                (Some(held), Some(time)) if writer.is_some() => held.downgrade(time),
                (Some(_), None) if writer.is_some() => capability = None,
                _ => {}
            }
            if !placed {
                capability = None;
            }
            let mut pending: Vec<(Row, T, Diff)> = Vec::new();
            let mut input = input;
            move |frontiers| {
                let Some(input) = input.as_mut() else {
                    return;
                };
                input.for_each(|_time, data| {
                    if let Some(lower) = &lower {
                        pending.extend(data.drain(..).filter(|update| update.1 >= *lower));
                    } else {
                        data.clear();
                    }
                });
                let Some(sink) = writer.as_mut() else {
                    return;
                };
                // Seen before any failure is looked at: a stalled sink
                // still sees its source move on, and so reports its lag.
                let frontier = frontiers[0].frontier().to_owned();
                monitor.source_upper(&frontier);
                if monitor.error().is_some() {
                    pending.clear();
                    return;
                }
                if !PartialOrder::less_than(&committed, &frontier) {
                    return;
                }
                let (complete, later): (Vec<_>, Vec<_>) = std::mem::take(&mut pending)
                    .into_iter()
                    .partition(|update| !frontier.less_equal(&update.1));
                pending = later;
                let mut complete = complete;
                differential_dataflow::consolidation::consolidate_updates(&mut complete);
                let bytes: usize = complete.iter().map(|(row, _, _)| row.byte_len()).sum();
                if let Err(error) = sink.commit(&complete, &frontier) {
                    monitor.fail(format!("committing to the file sink failed: {error}"));
                    return;
                }
                monitor.count(complete.len() as u64, bytes as u64);
                lower = frontier.elements().first().copied();
                match (&mut capability, frontier.elements().first()) {
                    (Some(held), Some(time)) => held.downgrade(time),
                    (Some(_), None) => capability = None,
                    (None, _) => {}
                }
                committed = frontier;
            }
        });
        stream.probe().0
    });
    Built {
        probe,
        monitor,
        placed,
    }
}
