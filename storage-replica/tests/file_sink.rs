//! The file sink: a model test over random commits and reopens, recovery
//! from torn writes, and every refusal and corruption it reports.

mod support;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use proptest::prelude::*;
use support::TempDir;
use tidemark_storage_replica::file_sink::{
    DATA_FILE, FileSink, FileSinkError, PROGRESS_FILE, PROGRESS_TEMP_FILE, read_committed,
    read_committed_upper,
};
use tidemark_storage_types::{Datum, Diff, Row};
use timely::progress::Antichain;

type Update = (Row, u64, Diff);

fn row(i: i64, s: &str) -> Row {
    Row::pack([Datum::Int64(i), Datum::String(s)])
}

fn upper(time: u64) -> Antichain<u64> {
    Antichain::from_elem(time)
}

fn data_len(dir: &Path) -> u64 {
    fs::metadata(dir.join(DATA_FILE)).unwrap().len()
}

fn append(path: &Path, bytes: &[u8]) {
    let mut file = OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(bytes).unwrap();
}

/// A datum of any kind, with the awkward values of each.
fn any_datum_row() -> impl Strategy<Value = Row> + Clone {
    #[derive(Clone, Debug)]
    enum Owned {
        Null,
        Bool(bool),
        Int64(i64),
        Float64(f64),
        String(String),
        Bytes(Vec<u8>),
        Timestamp(i64),
    }
    let datum = prop_oneof![
        Just(Owned::Null),
        any::<bool>().prop_map(Owned::Bool),
        any::<i64>().prop_map(Owned::Int64),
        any::<u64>().prop_map(|bits| Owned::Float64(f64::from_bits(bits))),
        prop_oneof![
            Just(0.0),
            Just(-0.0),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(f64::MIN_POSITIVE),
            Just(5e-324),
            Just(1.0),
            Just(-1e300)
        ]
        .prop_map(Owned::Float64),
        ".{0,12}".prop_map(Owned::String),
        proptest::collection::vec(any::<u8>(), 0..12).prop_map(Owned::Bytes),
        any::<i64>().prop_map(Owned::Timestamp),
    ];
    proptest::collection::vec(datum, 0..5).prop_map(|datums| {
        Row::pack(datums.iter().map(|datum| match datum {
            Owned::Null => Datum::Null,
            Owned::Bool(b) => Datum::Bool(*b),
            Owned::Int64(i) => Datum::Int64(*i),
            Owned::Float64(x) => Datum::Float64(*x),
            Owned::String(s) => Datum::String(s),
            Owned::Bytes(b) => Datum::Bytes(b),
            Owned::Timestamp(micros) => Datum::Timestamp(*micros),
        }))
    })
}

#[derive(Clone, Debug)]
enum Step {
    /// Commit these rows (diffs, and time offsets from the committed upper
    /// that are reduced into the interval), advancing the upper by
    /// `advance`.
    Commit {
        updates: Vec<(Row, u64, Diff)>,
        advance: u64,
    },
    /// Drop the sink and open the directory again.
    Reopen,
    /// Seal: commit with the empty upper.
    Seal(Vec<(Row, u64, Diff)>),
}

fn any_step() -> impl Strategy<Value = Step> {
    let updates = proptest::collection::vec((any_datum_row(), 0u64..1_000, -3i64..4), 0..6);
    prop_oneof![
        6 => (updates.clone(), 0u64..5).prop_map(|(updates, advance)| Step::Commit { updates, advance }),
        3 => Just(Step::Reopen),
        1 => updates.prop_map(Step::Seal),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random commits with reopens between them: the sink's committed upper
    /// and what `read_committed` returns always equal the model (every
    /// committed update, in commit order, with its row read back bit for
    /// bit), and a refused commit changes nothing.
    #[test]
    fn commits_and_reopens_follow_the_model(steps in proptest::collection::vec(any_step(), 1..16)) {
        let dir = TempDir::new("model");
        let mut sink = FileSink::<u64>::open(dir.path()).unwrap();
        let mut model: Vec<Update> = Vec::new();
        let mut model_upper: Option<Antichain<u64>> = None;
        for step in steps {
            let lower = model_upper.clone().unwrap_or_else(|| upper(0));
            let (updates, new_upper) = match step {
                Step::Reopen => {
                    drop(sink);
                    sink = FileSink::open(dir.path()).unwrap();
                    (None, lower.clone())
                }
                Step::Commit { updates, advance } => {
                    (Some(updates), lower.iter().map(|time| time + advance).collect())
                }
                Step::Seal(updates) => (Some(updates), Antichain::new()),
            };
            if let Some(updates) = updates {
                // Move each time into [lower, new_upper), where there is one.
                let width = match (lower.elements().first(), new_upper.elements().first()) {
                    (Some(low), Some(high)) => high - low,
                    (Some(_), None) => 1_000,
                    (None, _) => 0,
                };
                let updates: Vec<Update> = if width == 0 {
                    Vec::new()
                } else {
                    updates
                        .into_iter()
                        .map(|(row, offset, diff)| (row, lower.elements()[0] + offset % width, diff))
                        .collect()
                };
                sink.commit(&updates, &new_upper).unwrap();
                model.extend(updates);
                model_upper = Some(new_upper.clone());
                // A time at the new upper is refused and changes nothing.
                if let Some(at_upper) = new_upper.elements().first().copied() {
                    let refused = sink.commit(&[(row(0, "late"), at_upper, 1)], &new_upper);
                    let refused_as_outside = matches!(refused, Err(FileSinkError::UpdateOutsideInterval { .. }));
                    prop_assert!(refused_as_outside);
                }
            }
            prop_assert_eq!(sink.committed_upper(), model_upper.clone());
            prop_assert_eq!(read_committed_upper::<u64>(dir.path()).unwrap(), model_upper.clone());
            let read: Vec<Update> = read_committed(dir.path()).unwrap();
            prop_assert_eq!(read.len(), model.len());
            for (read, expected) in read.iter().zip(&model) {
                // Rows compare by their encoding, so floats compare bitwise.
                prop_assert_eq!(read, expected);
            }
        }
    }
}

#[test]
fn a_new_directory_has_nothing_committed() {
    let dir = TempDir::new("new");
    let nested = dir.path().join("a/b");
    let sink = FileSink::<u64>::open(&nested).unwrap();
    assert_eq!(sink.committed_upper(), None);
    assert_eq!(sink.commits(), 0);
    assert_eq!(sink.dir(), nested);
    assert_eq!(read_committed::<u64>(&nested).unwrap(), vec![]);
    assert_eq!(read_committed_upper::<u64>(&nested).unwrap(), None);
    // A directory no sink ever opened reads as empty too.
    assert_eq!(read_committed::<u64>(dir.path()).unwrap(), vec![]);
}

#[test]
fn the_data_file_is_json_lines() {
    let dir = TempDir::new("lines");
    let mut sink = FileSink::<u64>::open(dir.path()).unwrap();
    let updates = vec![
        (row(1, "one"), 3, 1),
        (
            Row::pack([Datum::Float64(2.5), Datum::Null, Datum::Bool(true)]),
            4,
            -2,
        ),
        (
            Row::pack([
                Datum::Bytes(&[0, 255]),
                Datum::Timestamp(-7),
                Datum::Float64(f64::NAN),
            ]),
            4,
            1,
        ),
    ];
    sink.commit(&updates, &upper(5)).unwrap();
    let text = fs::read_to_string(dir.path().join(DATA_FILE)).unwrap();
    let nan_bits = f64::NAN.to_bits();
    assert_eq!(
        text,
        format!(
            "{{\"row\":[1,\"one\"],\"time\":3,\"diff\":1}}\n\
             {{\"row\":[2.5,null,true],\"time\":4,\"diff\":-2}}\n\
             {{\"row\":[{{\"bytes\":\"00ff\"}},{{\"timestamp\":-7}},{{\"float64_bits\":{nan_bits}}}],\"time\":4,\"diff\":1}}\n"
        )
    );
    assert_eq!(read_committed::<u64>(dir.path()).unwrap(), updates);
    assert_eq!(sink.committed_len(), text.len() as u64);
    assert_eq!(sink.commits(), 1);
}

/// Bytes a crashed commit appended after the last committed record are cut
/// off when the directory is opened, and the next commit writes after the
/// committed data.
#[test]
fn a_torn_append_is_cut_off_at_open() {
    let dir = TempDir::new("torn");
    let mut sink = FileSink::<u64>::open(dir.path()).unwrap();
    sink.commit(&[(row(1, "a"), 0, 1)], &upper(1)).unwrap();
    let committed_len = data_len(dir.path());
    drop(sink);
    // Half a line, and a whole line that no record commits.
    append(
        &dir.path().join(DATA_FILE),
        b"{\"row\":[2,\"b\"],\"time\":1,\"diff\":1}\n{\"row\":[3",
    );
    assert_eq!(
        read_committed::<u64>(dir.path()).unwrap(),
        vec![(row(1, "a"), 0, 1)]
    );
    let mut sink = FileSink::<u64>::open(dir.path()).unwrap();
    assert_eq!(data_len(dir.path()), committed_len);
    assert_eq!(sink.committed_upper(), Some(upper(1)));
    sink.commit(&[(row(4, "d"), 1, 1)], &upper(2)).unwrap();
    drop(sink);
    assert_eq!(
        read_committed::<u64>(dir.path()).unwrap(),
        vec![(row(1, "a"), 0, 1), (row(4, "d"), 1, 1)]
    );
}

/// A crash after the temporary record was written but before the rename:
/// the commit did not happen; opening removes the temporary record and the
/// data it would have committed.
#[test]
fn a_temporary_record_left_behind_is_removed_at_open() {
    let dir = TempDir::new("temp-record");
    let mut sink = FileSink::<u64>::open(dir.path()).unwrap();
    sink.commit(&[(row(1, "a"), 0, 1)], &upper(1)).unwrap();
    let committed_len = data_len(dir.path());
    let old_record = fs::read(dir.path().join(PROGRESS_FILE)).unwrap();
    // A second commit, complete, whose record we then move back to the
    // temporary name, as if the crash came just before the rename.
    sink.commit(&[(row(2, "b"), 1, 1)], &upper(2)).unwrap();
    drop(sink);
    fs::rename(
        dir.path().join(PROGRESS_FILE),
        dir.path().join(PROGRESS_TEMP_FILE),
    )
    .unwrap();
    fs::write(dir.path().join(PROGRESS_FILE), &old_record).unwrap();
    assert_eq!(
        read_committed::<u64>(dir.path()).unwrap(),
        vec![(row(1, "a"), 0, 1)]
    );

    let mut sink = FileSink::<u64>::open(dir.path()).unwrap();
    assert!(!dir.path().join(PROGRESS_TEMP_FILE).exists());
    assert_eq!(data_len(dir.path()), committed_len);
    assert_eq!(sink.committed_upper(), Some(upper(1)));
    assert_eq!(sink.commits(), 1);
    sink.commit(&[(row(3, "c"), 1, 1)], &upper(2)).unwrap();
    assert_eq!(
        read_committed::<u64>(dir.path()).unwrap(),
        vec![(row(1, "a"), 0, 1), (row(3, "c"), 1, 1)]
    );
}

#[test]
fn a_corrupt_record_is_a_clear_error() {
    let dir = TempDir::new("corrupt-record");
    let mut sink = FileSink::<u64>::open(dir.path()).unwrap();
    sink.commit(&[(row(1, "a"), 0, 1)], &upper(1)).unwrap();
    drop(sink);
    let record_path = dir.path().join(PROGRESS_FILE);
    let record = fs::read_to_string(&record_path).unwrap();

    fs::write(&record_path, "garbage").unwrap();
    let err = FileSink::<u64>::open(dir.path()).unwrap_err();
    assert!(
        matches!(&err, FileSinkError::CorruptRecord { path, .. } if *path == record_path),
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with("corrupt file sink progress record"),
        "{err}"
    );
    assert!(matches!(
        read_committed::<u64>(dir.path()),
        Err(FileSinkError::CorruptRecord { .. })
    ));
    assert!(matches!(
        read_committed_upper::<u64>(dir.path()),
        Err(FileSinkError::CorruptRecord { .. })
    ));

    // A record whose fields no longer match its checksum.
    let tampered = record.replace("\"commits\":1", "\"commits\":2");
    assert_ne!(tampered, record);
    fs::write(&record_path, tampered).unwrap();
    let err = FileSink::<u64>::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("checksum mismatch"), "{err}");

    // Nothing was cut off while the record could not be trusted.
    fs::write(&record_path, &record).unwrap();
    assert_eq!(
        read_committed::<u64>(dir.path()).unwrap(),
        vec![(row(1, "a"), 0, 1)]
    );
}

#[test]
fn a_record_longer_than_the_data_is_a_clear_error() {
    let dir = TempDir::new("short-data");
    let mut sink = FileSink::<u64>::open(dir.path()).unwrap();
    sink.commit(&[(row(1, "a"), 0, 1), (row(2, "b"), 0, 1)], &upper(1))
        .unwrap();
    let committed_len = sink.committed_len();
    drop(sink);
    let data_path = dir.path().join(DATA_FILE);
    OpenOptions::new()
        .write(true)
        .open(&data_path)
        .unwrap()
        .set_len(10)
        .unwrap();
    for err in [
        FileSink::<u64>::open(dir.path()).unwrap_err(),
        read_committed::<u64>(dir.path()).unwrap_err(),
    ] {
        match &err {
            FileSinkError::RecordBeyondData {
                path,
                record_len,
                data_len,
            } => {
                assert_eq!(
                    (path, *record_len, *data_len),
                    (&data_path, committed_len, 10)
                );
            }
            other => panic!("expected RecordBeyondData, got {other}"),
        }
        assert!(err.to_string().contains("record_len="), "{err}");
    }
}

#[test]
fn a_corrupt_data_line_is_a_clear_error() {
    let dir = TempDir::new("corrupt-data");
    let mut sink = FileSink::<u64>::open(dir.path()).unwrap();
    sink.commit(
        &[
            (row(1, "a"), 0, 1),
            (row(2, "b"), 0, 1),
            (row(3, "c"), 0, 1),
        ],
        &upper(1),
    )
    .unwrap();
    drop(sink);
    let data_path = dir.path().join(DATA_FILE);
    let text = fs::read_to_string(&data_path).unwrap();
    let second = |from: &str, to: &str| {
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        format!("{}{}{}", lines[0], lines[1].replacen(from, to, 1), lines[2])
    };
    for (bad, line, problem) in [
        (second("{", "x"), 2, "not JSON"),
        (second("\"time\"", "\"tima\""), 2, "unknown field \"tima\""),
        (
            second("\"b\"", "[0]"),
            2,
            "datum 1: a datum cannot be an array",
        ),
        (second("\"diff\":1", "\"diff\":x"), 2, "not JSON"),
        (
            second("\"b\"", "{} "),
            2,
            "datum 1: expected an object with one tag",
        ),
        (
            format!("{} ", text.trim_end()),
            3,
            "does not end with a newline",
        ),
    ] {
        assert_eq!(bad.len(), text.len(), "the edit keeps the length: {bad}");
        fs::write(&data_path, &bad).unwrap();
        match read_committed::<u64>(dir.path()).unwrap_err() {
            FileSinkError::CorruptData {
                path,
                line: found_line,
                problem: found,
            } => {
                assert_eq!((path, found_line), (data_path.clone(), line), "{found}");
                assert!(found.contains(problem), "{found} should say {problem}");
            }
            other => panic!("expected CorruptData, got {other}"),
        }
    }
}

/// An update outside `[committed upper, new upper)` or an upper that goes
/// back is refused before anything is written.
#[test]
fn refused_commits_write_nothing() {
    let dir = TempDir::new("refused");
    let mut sink = FileSink::<u64>::open(dir.path()).unwrap();
    sink.commit(&[(row(1, "a"), 3, 1)], &upper(5)).unwrap();
    let committed_len = data_len(dir.path());
    let record = fs::read(dir.path().join(PROGRESS_FILE)).unwrap();
    let check_unchanged = |sink: &FileSink<u64>| {
        assert_eq!(data_len(dir.path()), committed_len);
        assert_eq!(fs::read(dir.path().join(PROGRESS_FILE)).unwrap(), record);
        assert!(!dir.path().join(PROGRESS_TEMP_FILE).exists());
        assert_eq!(sink.committed_upper(), Some(upper(5)));
    };

    for (time, new_upper) in [(4, 9), (9, 9), (12, 9)] {
        let updates = [(row(2, "ok"), 6, 1), (row(3, "bad"), time, 1)];
        let err = sink.commit(&updates, &upper(new_upper)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "file sink update outside the commit's interval: path={} time={time} lower=[5] upper=[9]",
                dir.path().display()
            )
        );
        check_unchanged(&sink);
    }
    let err = sink.commit(&[], &upper(4)).unwrap_err();
    assert!(matches!(err, FileSinkError::UpperRegressed { .. }), "{err}");
    assert!(err.to_string().contains("committed=[5] new=[4]"), "{err}");
    check_unchanged(&sink);
    // The same upper again with nothing to write changes nothing either.
    sink.commit(&[], &upper(5)).unwrap();
    check_unchanged(&sink);
    assert_eq!(sink.commits(), 1);

    // Once sealed, nothing more can be committed.
    sink.commit(&[(row(4, "last"), 1_000, 1)], &Antichain::new())
        .unwrap();
    let err = sink
        .commit(&[(row(5, "after"), 2_000, 1)], &Antichain::new())
        .unwrap_err();
    assert!(
        matches!(err, FileSinkError::UpdateOutsideInterval { .. }),
        "{err}"
    );
    assert!(matches!(
        sink.commit(&[], &upper(7)),
        Err(FileSinkError::UpperRegressed { .. })
    ));
    drop(sink);
    assert_eq!(
        read_committed::<u64>(dir.path()).unwrap(),
        vec![(row(1, "a"), 3, 1), (row(4, "last"), 1_000, 1)]
    );
    assert_eq!(
        FileSink::<u64>::open(dir.path()).unwrap().committed_upper(),
        Some(Antichain::new())
    );
}

/// A commit that fails after appending its data (here: the temporary
/// record cannot be created) commits nothing, and the next commit cuts off
/// what it appended.
#[test]
fn a_failed_commit_leaves_nothing_committed() {
    let dir = TempDir::new("failed-commit");
    let mut sink = FileSink::<u64>::open(dir.path()).unwrap();
    sink.commit(&[(row(1, "a"), 0, 1)], &upper(1)).unwrap();
    let committed_len = data_len(dir.path());
    fs::create_dir(dir.path().join(PROGRESS_TEMP_FILE)).unwrap();
    let err = sink
        .commit(&[(row(2, "lost"), 1, 1)], &upper(2))
        .unwrap_err();
    match &err {
        FileSinkError::Io { path, action, .. } => {
            assert_eq!(
                (path, *action),
                (&dir.path().join(PROGRESS_TEMP_FILE), "create")
            );
        }
        other => panic!("expected Io, got {other}"),
    }
    assert!(
        data_len(dir.path()) > committed_len,
        "the data was appended"
    );
    assert_eq!(sink.committed_upper(), Some(upper(1)));
    assert_eq!(
        read_committed::<u64>(dir.path()).unwrap(),
        vec![(row(1, "a"), 0, 1)]
    );

    fs::remove_dir(dir.path().join(PROGRESS_TEMP_FILE)).unwrap();
    sink.commit(&[(row(3, "c"), 1, 1)], &upper(2)).unwrap();
    assert_eq!(
        read_committed::<u64>(dir.path()).unwrap(),
        vec![(row(1, "a"), 0, 1), (row(3, "c"), 1, 1)]
    );
    assert_eq!(data_len(dir.path()), sink.committed_len());
}

#[test]
fn one_sink_at_a_time() {
    let dir = TempDir::new("locked");
    let sink = FileSink::<u64>::open(dir.path()).unwrap();
    let err = FileSink::<u64>::open(dir.path()).unwrap_err();
    assert!(
        matches!(&err, FileSinkError::Locked { path } if *path == dir.path().join(DATA_FILE)),
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with("file sink directory is in use by another sink"),
        "{err}"
    );
    drop(sink);
    FileSink::<u64>::open(dir.path()).unwrap();
}

#[test]
fn a_path_that_is_not_a_directory_is_an_io_error() {
    let dir = TempDir::new("not-a-dir");
    let file = dir.path().join("plain-file");
    fs::write(&file, "x").unwrap();
    let err = FileSink::<u64>::open(&file).unwrap_err();
    match &err {
        FileSinkError::Io { path, action, .. } => {
            assert_eq!((path, *action), (&file, "create the directory"));
        }
        other => panic!("expected Io, got {other}"),
    }
    assert!(
        err.to_string()
            .starts_with("file sink cannot create the directory"),
        "{err}"
    );
    assert!(std::error::Error::source(&err).is_some());
}
