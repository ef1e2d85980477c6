//! `tidemark cat URL ID`: a collection's contents, and with `--follow`
//! every later change and progress, as a subscription reports them.
//!
//! A [`Subscription`](crate::controller::Subscription) needs a controller,
//! and constructing one fences the controller running on the store. So
//! `cat` reads the collection's shard directly: it finds the shard in the
//! controller metadata, takes a snapshot, then follows with
//! `wait_for_upper_past` and `fetch`. It holds no read hold: if the running
//! controller compacts past the snapshot time first, the read fails with
//! the backend's `as_of not readable` error and can be retried.

use std::future::Future;
use std::io::Write;

use clap::ValueEnum;
use serde_json::json;
use timely::progress::Antichain;

use super::{ToolError, frontier_elements, frontier_text, row_json};
use crate::controller::read_metadata;
use crate::types::{Datum, Diff, GlobalId, PersistBackend, Row, step_back_frontier};

/// How `cat` prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON object a line: `{"event":"row"|"update","time":T,"diff":D,"row":[...]}`
    /// and `{"event":"progress","upper":[...]}`.
    Json,
    /// `event,time,diff,value...` with a header line.
    Csv,
    /// Aligned columns for people.
    #[default]
    Table,
}

/// What `cat` is asked to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CatOptions {
    /// The snapshot time; the latest readable time when `None`.
    pub as_of: Option<u64>,
    /// Keep printing changes and progress after the snapshot until stopped
    /// or the collection is sealed.
    pub follow: bool,
    /// How to print.
    pub format: Format,
}

/// What `cat` printed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CatSummary {
    /// The snapshot time.
    pub as_of: u64,
    /// Rows of the snapshot.
    pub snapshot_rows: usize,
    /// Updates printed while following.
    pub updates: usize,
    /// The upper reached when `cat` stopped.
    pub upper: Antichain<u64>,
}

struct Printer<'a> {
    format: Format,
    out: &'a mut dyn Write,
}

impl Printer<'_> {
    fn header(&mut self) -> std::io::Result<()> {
        match self.format {
            Format::Json => Ok(()),
            Format::Csv => writeln!(self.out, "event,time,diff,values"),
            Format::Table => writeln!(self.out, "{:<8} {:>10} {:>6}  row", "event", "time", "diff"),
        }
    }

    fn row(&mut self, event: &str, time: u64, row: &Row, diff: Diff) -> std::io::Result<()> {
        match self.format {
            Format::Json => writeln!(
                self.out,
                "{}",
                json!({"event": event, "time": time, "diff": diff, "row": row_json(row)})
            ),
            Format::Csv => {
                let mut line = format!("{event},{time},{diff}");
                for datum in row.iter() {
                    line.push(',');
                    line.push_str(&csv_field(&datum));
                }
                writeln!(self.out, "{line}")
            }
            Format::Table => writeln!(self.out, "{event:<8} {time:>10} {diff:>6}  {row}"),
        }
    }

    fn progress(&mut self, upper: &Antichain<u64>) -> std::io::Result<()> {
        match self.format {
            Format::Json => writeln!(
                self.out,
                "{}",
                json!({"event": "progress", "upper": frontier_elements(upper)})
            ),
            Format::Csv => writeln!(self.out, "progress,\"{}\",", frontier_text(upper)),
            Format::Table => writeln!(self.out, "{:<8} {:>10}", "progress", frontier_text(upper)),
        }
    }
}

/// A datum as one CSV field (quoted when it holds a comma, quote or line
/// break; NULL as an empty field).
fn csv_field(datum: &Datum<'_>) -> String {
    let text = match datum {
        Datum::Null => return String::new(),
        Datum::String(text) => (*text).to_string(),
        other => other.to_string(),
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// Prints collection `id` of `backend`: its snapshot at `options.as_of`
/// (default: the latest readable time), then with `options.follow` every
/// later change and progress until `stop` completes or the collection is
/// sealed. Writes nothing to the backend.
///
/// # Errors
///
/// [`ToolError::UnknownCollection`] if the metadata does not record `id`;
/// [`ToolError::NothingReadable`] if nothing can be read yet without
/// `follow`; the backend's error for an `as_of` outside `[since, upper)`.
pub async fn cat_backend(
    backend: &dyn PersistBackend<u64>,
    id: GlobalId,
    options: CatOptions,
    out: &mut dyn Write,
    stop: impl Future<Output = ()>,
) -> Result<CatSummary, ToolError> {
    let view = read_metadata::<u64, _>(backend).await?;
    let shard = *view
        .collections
        .get(&id)
        .ok_or(ToolError::UnknownCollection { id })?;
    let frontiers = backend.frontiers(shard).await?;
    let mut stop = std::pin::pin!(stop);
    let as_of = match options.as_of {
        Some(as_of) => as_of,
        None => {
            let latest = step_back_frontier(&frontiers.upper);
            let latest = latest.elements().first().copied().unwrap_or(u64::MAX);
            let since = frontiers
                .since
                .elements()
                .first()
                .copied()
                .unwrap_or(u64::MAX);
            let readable_now = !frontiers.upper.less_equal(&latest) && since <= latest;
            if !readable_now && !options.follow {
                return Err(ToolError::NothingReadable {
                    since: frontier_text(&frontiers.since),
                    upper: frontier_text(&frontiers.upper),
                });
            }
            latest.max(since)
        }
    };
    let mut printer = Printer {
        format: options.format,
        out,
    };
    printer.header()?;
    let mut summary = CatSummary {
        as_of,
        ..CatSummary::default()
    };
    // With --follow, a snapshot time not yet final is waited for.
    let mut upper = frontiers.upper;
    if options.follow && upper.less_equal(&as_of) {
        let snapshot_time = Antichain::from_elem(as_of);
        tokio::select! {
            () = &mut stop => {
                summary.upper = upper;
                return Ok(summary);
            }
            reached = backend.wait_for_upper_past(shard, &snapshot_time) => {
                upper = reached?;
            }
        }
    }
    let rows = backend.snapshot(shard, &as_of).await?;
    for (row, diff) in &rows {
        printer.row("row", as_of, row, *diff)?;
    }
    summary.snapshot_rows = rows.len();
    let mut position = Antichain::from_elem(as_of.saturating_add(1));
    if options.follow {
        // SUBTLE: the snapshot time is below `upper`, so `[as_of + 1,
        // upper)` is a valid fetch: the changes already final.
        let updates = backend.fetch(shard, &position, &upper).await?;
        for update in &updates {
            printer.row("update", update.timestamp, &update.row, update.diff)?;
        }
        summary.updates += updates.len();
        position = upper.clone();
        printer.progress(&position)?;
        printer.out.flush()?;
        while !position.is_empty() {
            let reached = tokio::select! {
                () = &mut stop => break,
                reached = backend.wait_for_upper_past(shard, &position) => reached?,
            };
            let updates = backend.fetch(shard, &position, &reached).await?;
            for update in &updates {
                printer.row("update", update.timestamp, &update.row, update.diff)?;
            }
            summary.updates += updates.len();
            printer.progress(&reached)?;
            printer.out.flush()?;
            position = reached;
        }
        summary.upper = position;
    } else {
        summary.upper = upper;
    }
    printer.out.flush()?;
    Ok(summary)
}

/// Opens `url` and runs [`cat_backend`], stopping on Ctrl-C.
///
/// # Errors
///
/// As [`open`](crate::open) and [`cat_backend`].
pub async fn run(
    url: &str,
    id: &str,
    options: CatOptions,
    out: &mut dyn Write,
) -> Result<CatSummary, ToolError> {
    let id = super::parse_collection_id(id)?;
    let backend = crate::open(url).await?;
    let stop = async {
        // If the handler cannot be installed, run until sealed.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    cat_backend(&*backend, id, options, out, stop).await
}
