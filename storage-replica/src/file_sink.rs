//! The file sink's storage: JSON lines under a directory the sink owns,
//! committed exactly once across crashes.
//!
//! # Layout
//!
//! - [`DATA_FILE`]: one line per update, `{"row": [...], "time": T, "diff":
//!   D}` (rows and times as the crate's JSON form writes them: for `u64`
//!   times the time is the number itself), appended commit by commit.
//! - [`PROGRESS_FILE`]: the committed-progress record: the committed upper,
//!   how many bytes of the data file are committed, how many commits there
//!   were, and a CRC-32 of those fields.
//! - [`PROGRESS_TEMP_FILE`]: the next record while a commit writes it.
//!
//! # Exactly once
//!
//! A commit (see [`FileSink::commit`]) appends its lines at the committed
//! length, syncs the data, writes the new record to the temporary file,
//! syncs it, renames it over the record and syncs the directory. The rename
//! is the commit point: the record names the committed prefix of the data
//! file, so whatever a crash left (bytes past that prefix, a temporary
//! record) is not committed, and [`FileSink::open`] cuts it off. A process
//! killed at any instruction therefore leaves either the old commit or the
//! new one, never part of one, and a restarted writer resumes at
//! [`FileSink::committed_upper`], so nothing is written twice.
//!
//! One sink at a time: [`FileSink::open`] takes an exclusive lock on the
//! data file (released by the kernel when the process dies).

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tidemark_storage_types::{Diff, ErasedFrontier, ErasedTime, Row, StorageTimestamp};
use timely::PartialOrder;
use timely::progress::Antichain;

use crate::json::{decode_update, encode_update, number_time, time_number};

/// The data file's name inside the sink's directory.
pub const DATA_FILE: &str = "data.jsonl";
/// The committed-progress record's name inside the sink's directory.
pub const PROGRESS_FILE: &str = "progress.json";
/// The name a new record is written under before it is renamed over
/// [`PROGRESS_FILE`].
pub const PROGRESS_TEMP_FILE: &str = "progress.json.tmp";

/// The record format this version writes and reads.
const RECORD_FORMAT: u32 = 1;

/// What went wrong in a file sink; each names the path involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileSinkError {
    /// A file system call failed.
    #[error("file sink cannot {action} {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the sink was doing ("open", "sync", ...).
        action: &'static str,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// Another sink (in this process or another) has the directory open.
    #[error("file sink directory is in use by another sink: {path}")]
    Locked {
        /// The data file whose lock is held.
        path: PathBuf,
    },
    /// The progress record cannot be read: not the format this version
    /// writes, or its checksum does not match.
    #[error("corrupt file sink progress record {path}: {problem}")]
    CorruptRecord {
        /// The record.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The progress record says more bytes are committed than the data file
    /// holds: committed data was lost (the file was truncated or replaced).
    #[error(
        "file sink progress record claims more data than the data file holds: path={path} record_len={record_len} data_len={data_len}"
    )]
    RecordBeyondData {
        /// The data file.
        path: PathBuf,
        /// The committed length the record gives.
        record_len: u64,
        /// The data file's length.
        data_len: u64,
    },
    /// A committed line of the data file is not an update.
    #[error("corrupt file sink data file {path} at line {line}: {problem}")]
    CorruptData {
        /// The data file.
        path: PathBuf,
        /// The line, counting from 1.
        line: u64,
        /// What is wrong with it.
        problem: String,
    },
    /// An update of a commit is not at a time in `[committed upper, new
    /// upper)`; nothing was written.
    #[error(
        "file sink update outside the commit's interval: path={path} time={time} lower={lower} upper={upper}"
    )]
    UpdateOutsideInterval {
        /// The sink's directory.
        path: PathBuf,
        /// The update's time.
        time: ErasedTime,
        /// The committed upper (the minimum time before the first commit).
        lower: ErasedFrontier,
        /// The commit's new upper.
        upper: ErasedFrontier,
    },
    /// A commit's new upper is not at or beyond the committed upper;
    /// nothing was written.
    #[error("file sink upper would go back: path={path} committed={committed} new={new}")]
    UpperRegressed {
        /// The sink's directory.
        path: PathBuf,
        /// The committed upper.
        committed: ErasedFrontier,
        /// The upper the commit asked for.
        new: ErasedFrontier,
    },
}

fn io_error<'a>(
    path: &'a Path,
    action: &'static str,
) -> impl FnOnce(io::Error) -> FileSinkError + 'a {
    move |source| FileSinkError::Io {
        path: path.to_owned(),
        action,
        source,
    }
}

/// The progress record as stored.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredRecord {
    format: u32,
    /// The committed upper's time as a number, or empty (sealed).
    upper: Vec<u64>,
    data_len: u64,
    commits: u64,
    crc32: u32,
}

impl StoredRecord {
    fn checksum(format: u32, upper: &[u64], data_len: u64, commits: u64) -> u32 {
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&format.to_le_bytes());
        hasher.update(&(upper.len() as u64).to_le_bytes());
        for time in upper {
            hasher.update(&time.to_le_bytes());
        }
        hasher.update(&data_len.to_le_bytes());
        hasher.update(&commits.to_le_bytes());
        hasher.finalize()
    }
}

/// What the progress record says is committed.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Committed<T> {
    upper: Antichain<T>,
    data_len: u64,
    commits: u64,
}

impl<T: StorageTimestamp> Committed<T> {
    fn encode(&self) -> Vec<u8> {
        let upper: Vec<u64> = self.upper.iter().map(time_number).collect();
        let record = StoredRecord {
            format: RECORD_FORMAT,
            crc32: StoredRecord::checksum(RECORD_FORMAT, &upper, self.data_len, self.commits),
            upper,
            data_len: self.data_len,
            commits: self.commits,
        };
        let mut bytes = serde_json::to_vec(&record).expect("a record serializes");
        bytes.push(b'\n');
        bytes
    }

    fn decode(bytes: &[u8], path: &Path) -> Result<Committed<T>, FileSinkError> {
        let corrupt = |problem: String| FileSinkError::CorruptRecord {
            path: path.to_owned(),
            problem,
        };
        let record: StoredRecord =
            serde_json::from_slice(bytes).map_err(|err| corrupt(format!("not a record: {err}")))?;
        if record.format != RECORD_FORMAT {
            return Err(corrupt(format!(
                "unknown format {} (this version reads {RECORD_FORMAT})",
                record.format
            )));
        }
        let expected = StoredRecord::checksum(
            record.format,
            &record.upper,
            record.data_len,
            record.commits,
        );
        if record.crc32 != expected {
            return Err(corrupt(format!(
                "checksum mismatch: stored={} computed={expected}",
                record.crc32
            )));
        }
        if record.upper.len() > 1 {
            return Err(corrupt(format!(
                "upper has {} times; a frontier of totally ordered times has at most one",
                record.upper.len()
            )));
        }
        let upper = record
            .upper
            .iter()
            .map(|number| {
                number_time(*number).ok_or_else(|| corrupt(format!("upper {number} is not a time")))
            })
            .collect::<Result<Antichain<T>, _>>()?;
        Ok(Committed {
            upper,
            data_len: record.data_len,
            commits: record.commits,
        })
    }
}

/// Reads the progress record of `dir`, if there is one.
fn read_record<T: StorageTimestamp>(dir: &Path) -> Result<Option<Committed<T>>, FileSinkError> {
    let path = dir.join(PROGRESS_FILE);
    match fs::read(&path) {
        Ok(bytes) => Committed::decode(&bytes, &path).map(Some),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(io_error(&path, "read")(err)),
    }
}

/// Syncs a directory, so that the renames and creations in it are durable.
fn sync_dir(dir: &Path) -> Result<(), FileSinkError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(io_error(dir, "sync the directory"))
}

/// A file sink's directory, open for commits. See the [module
/// docs](self) for the layout and the protocol.
#[derive(Debug)]
pub struct FileSink<T> {
    dir: PathBuf,
    data_path: PathBuf,
    /// The data file, locked for as long as the sink lives.
    data: File,
    /// What is committed; `None` before the first commit.
    committed: Option<Committed<T>>,
    /// Whether the data file may hold bytes past the committed length (a
    /// crashed or failed commit's); they are cut off before the next append.
    uncommitted_tail: bool,
}

impl<T: StorageTimestamp> FileSink<T> {
    /// Opens or creates the directory `dir` and recovers it: whatever a
    /// crashed commit left beyond the last committed record (bytes past the
    /// committed length of the data file, a temporary record) is cut off.
    ///
    /// # Errors
    ///
    /// [`FileSinkError::Locked`] when another sink has the directory open;
    /// [`FileSinkError::CorruptRecord`] or
    /// [`FileSinkError::RecordBeyondData`] when the record cannot be
    /// trusted (nothing is cut off then); [`FileSinkError::Io`] when a file
    /// system call fails.
    pub fn open(dir: &Path) -> Result<FileSink<T>, FileSinkError> {
        let created = !dir.is_dir();
        fs::create_dir_all(dir).map_err(io_error(dir, "create the directory"))?;
        if created
            && let Some(parent) = dir.parent().filter(|parent| !parent.as_os_str().is_empty())
        {
            // The directory's own entry must survive a machine crash too.
            sync_dir(parent)?;
        }
        let data_path = dir.join(DATA_FILE);
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&data_path)
            .map_err(io_error(&data_path, "open"))?;
        match data.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(FileSinkError::Locked { path: data_path });
            }
            Err(TryLockError::Error(err)) => return Err(io_error(&data_path, "lock")(err)),
        }
        // SUBTLE: the temporary record is removed only once we hold the
        // lock: until then it may be a live sink's commit in progress.
        let temp_path = dir.join(PROGRESS_TEMP_FILE);
        match fs::remove_file(&temp_path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_error(&temp_path, "remove")(err)),
        }
        let committed = read_record::<T>(dir)?;
        let committed_len = committed.as_ref().map_or(0, |committed| committed.data_len);
        let data_len = data.metadata().map_err(io_error(&data_path, "stat"))?.len();
        if data_len < committed_len {
            return Err(FileSinkError::RecordBeyondData {
                path: data_path,
                record_len: committed_len,
                data_len,
            });
        }
        let mut sink = FileSink {
            dir: dir.to_owned(),
            data_path,
            data,
            committed,
            uncommitted_tail: data_len > committed_len,
        };
        sink.cut_to_committed()?;
        Ok(sink)
    }

    /// The sink's directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The frontier every committed update is below (`None` before the
    /// first commit): a restarted sink resumes reading here and never
    /// re-emits.
    #[must_use]
    pub fn committed_upper(&self) -> Option<Antichain<T>> {
        self.committed
            .as_ref()
            .map(|committed| committed.upper.clone())
    }

    /// How many commits there have been.
    #[must_use]
    pub fn commits(&self) -> u64 {
        self.committed
            .as_ref()
            .map_or(0, |committed| committed.commits)
    }

    /// How many bytes of the data file are committed.
    #[must_use]
    pub fn committed_len(&self) -> u64 {
        self.committed
            .as_ref()
            .map_or(0, |committed| committed.data_len)
    }

    /// Cuts the data file back to the committed length, durably.
    fn cut_to_committed(&mut self) -> Result<(), FileSinkError> {
        if self.uncommitted_tail {
            self.data
                .set_len(self.committed_len())
                .map_err(io_error(&self.data_path, "truncate"))?;
            self.data
                .sync_all()
                .map_err(io_error(&self.data_path, "sync"))?;
            self.uncommitted_tail = false;
        }
        Ok(())
    }

    /// Writes `updates` (all at times in `[committed_upper, new_upper)`;
    /// before the first commit the lower bound is the minimum time) and
    /// then records `new_upper` as committed, durably: it syncs the data,
    /// writes the record to a temporary file, syncs it, renames it over the
    /// record and syncs the directory. A commit that changes nothing (no
    /// updates, the committed upper again) writes nothing.
    ///
    /// # Errors
    ///
    /// [`FileSinkError::UpdateOutsideInterval`] and
    /// [`FileSinkError::UpperRegressed`] before anything is written.
    /// [`FileSinkError::Io`] when a file system call fails: if it failed
    /// before the record was renamed, nothing is committed and the next
    /// commit cuts off what this one wrote; if only the directory sync
    /// failed, the commit is in effect ([`committed_upper`] says
    /// `new_upper`) but may not survive a machine crash.
    ///
    /// [`committed_upper`]: FileSink::committed_upper
    pub fn commit(
        &mut self,
        updates: &[(Row, T, Diff)],
        new_upper: &Antichain<T>,
    ) -> Result<(), FileSinkError> {
        let lower = self
            .committed_upper()
            .unwrap_or_else(|| Antichain::from_elem(T::minimum()));
        if !PartialOrder::less_equal(&lower, new_upper) {
            return Err(FileSinkError::UpperRegressed {
                path: self.dir.clone(),
                committed: ErasedFrontier::new(&lower),
                new: ErasedFrontier::new(new_upper),
            });
        }
        if let Some((_, time, _)) = updates
            .iter()
            .find(|(_, time, _)| !lower.less_equal(time) || new_upper.less_equal(time))
        {
            return Err(FileSinkError::UpdateOutsideInterval {
                path: self.dir.clone(),
                time: ErasedTime::new(time),
                lower: ErasedFrontier::new(&lower),
                upper: ErasedFrontier::new(new_upper),
            });
        }
        if updates.is_empty() && self.committed_upper().as_ref() == Some(new_upper) {
            return Ok(());
        }

        let mut lines = Vec::new();
        for (row, time, diff) in updates {
            lines.extend_from_slice(encode_update(row, time, *diff).as_bytes());
            lines.push(b'\n');
        }
        // Anything a failed commit left past the committed length goes first.
        self.cut_to_committed()?;
        let committed_len = self.committed_len();
        self.data
            .seek(SeekFrom::Start(committed_len))
            .map_err(io_error(&self.data_path, "seek"))?;
        // From here the file may hold more than is committed.
        self.uncommitted_tail = true;
        self.data
            .write_all(&lines)
            .map_err(io_error(&self.data_path, "append to"))?;
        let new_len = committed_len + lines.len() as u64;
        // SUBTLE: the data is durable before the record that commits it
        // exists, so no record ever names bytes a crash could lose.
        self.data
            .sync_data()
            .map_err(io_error(&self.data_path, "sync"))?;

        let committed = Committed {
            upper: new_upper.clone(),
            data_len: new_len,
            commits: self.commits() + 1,
        };
        let temp_path = self.dir.join(PROGRESS_TEMP_FILE);
        let mut temp = File::create(&temp_path).map_err(io_error(&temp_path, "create"))?;
        temp.write_all(&committed.encode())
            .map_err(io_error(&temp_path, "write"))?;
        temp.sync_all().map_err(io_error(&temp_path, "sync"))?;
        drop(temp);
        let record_path = self.dir.join(PROGRESS_FILE);
        // SUBTLE: the rename is the commit point. Before it the old record
        // stands and the new bytes are cut off at the next open or commit;
        // after it the new record stands, whole (it was synced under the
        // temporary name).
        fs::rename(&temp_path, &record_path).map_err(io_error(&record_path, "rename over"))?;
        self.committed = Some(committed);
        self.uncommitted_tail = false;
        sync_dir(&self.dir)
    }
}

/// The committed upper of a sink directory, as
/// [`FileSink::committed_upper`] gives it (`None` before the first commit),
/// read without opening the sink: it takes no lock and changes nothing.
///
/// # Errors
///
/// [`FileSinkError::CorruptRecord`] when the record cannot be read back;
/// [`FileSinkError::Io`] when it cannot be read at all.
pub fn read_committed_upper<T: StorageTimestamp>(
    dir: &Path,
) -> Result<Option<Antichain<T>>, FileSinkError> {
    Ok(read_record::<T>(dir)?.map(|committed| committed.upper))
}

/// Reads a sink directory back: the committed updates only, in the order
/// they were committed. A directory without a record (no commit yet) reads
/// as empty. It takes no lock and changes nothing, so it may run while a
/// sink commits.
///
/// # Errors
///
/// [`FileSinkError::CorruptRecord`], [`FileSinkError::RecordBeyondData`]
/// and [`FileSinkError::CorruptData`] when the directory does not hold what
/// a sink wrote; [`FileSinkError::Io`] when a file cannot be read.
pub fn read_committed<T: StorageTimestamp>(
    dir: &Path,
) -> Result<Vec<(Row, T, Diff)>, FileSinkError> {
    let Some(committed) = read_record::<T>(dir)? else {
        return Ok(Vec::new());
    };
    let data_path = dir.join(DATA_FILE);
    let mut data = File::open(&data_path).map_err(io_error(&data_path, "open"))?;
    let mut bytes = Vec::new();
    (&mut data)
        .take(committed.data_len)
        .read_to_end(&mut bytes)
        .map_err(io_error(&data_path, "read"))?;
    if (bytes.len() as u64) < committed.data_len {
        return Err(FileSinkError::RecordBeyondData {
            path: data_path,
            record_len: committed.data_len,
            data_len: bytes.len() as u64,
        });
    }
    let corrupt = |line: usize, problem: String| FileSinkError::CorruptData {
        path: data_path.clone(),
        line: line as u64 + 1,
        problem,
    };
    let Some(body) = bytes.strip_suffix(b"\n") else {
        return match bytes.is_empty() {
            true => Ok(Vec::new()),
            false => Err(corrupt(
                bytes.iter().filter(|byte| **byte == b'\n').count(),
                "the committed data does not end with a newline".to_owned(),
            )),
        };
    };
    body.split(|byte| *byte == b'\n')
        .enumerate()
        .map(|(index, line)| {
            let line = std::str::from_utf8(line)
                .map_err(|err| corrupt(index, format!("not utf-8: {err}")))?;
            decode_update(line).map_err(|problem| corrupt(index, problem))
        })
        .collect()
}
