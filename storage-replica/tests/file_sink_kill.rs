//! The file sink under SIGKILL: a writer process commits in a loop and is
//! killed at seeded points, ten times; after each kill the directory is
//! reopened and must hold a prefix of the writer's commits, each whole, none
//! twice.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::TempDir;
use tidemark_storage_replica::file_sink::{DATA_FILE, FileSink, read_committed};
use tidemark_storage_types::{Datum, Diff, Row};
use timely::progress::Antichain;

/// Tells the writer which directory to commit into; without it the writer
/// test does nothing.
const WRITER_DIR: &str = "TIDEMARK_FILE_SINK_WRITER_DIR";
/// Tells the writer how many commits to reach before it exits.
const WRITER_COMMITS: &str = "TIDEMARK_FILE_SINK_WRITER_COMMITS";
/// The writer's own bound on its running time.
const WRITER_TIME_LIMIT: Duration = Duration::from_secs(60);
/// How long the test waits for a writer to open the directory.
const WRITER_START_LIMIT: Duration = Duration::from_secs(60);
const KILLS: u64 = 10;

/// What commit number `commit` writes: a few dozen rows at time `commit`,
/// how many depending on the number.
fn commit_updates(commit: u64) -> Vec<(Row, u64, Diff)> {
    let filler = "x".repeat(64);
    (0..1 + commit * 7_919 % 50)
        .map(|index| {
            let row = Row::pack([
                Datum::Int64(commit as i64),
                Datum::Int64(index as i64),
                Datum::String(&filler),
            ]);
            (row, commit, 1)
        })
        .collect()
}

/// The writer process (started by `killed_writers_leave_whole_commits`):
/// opens the directory, says where it resumes, and commits commit after
/// commit until it reaches the asked number or its time limit.
#[test]
#[ignore = "the writer process of killed_writers_leave_whole_commits, which starts it"]
fn file_sink_writer() {
    let Ok(dir) = std::env::var(WRITER_DIR) else {
        eprintln!("{WRITER_DIR} is not set: nothing to write");
        return;
    };
    let commits: u64 = std::env::var(WRITER_COMMITS)
        .expect("the number of commits to reach")
        .parse()
        .expect("a number of commits");
    let mut sink = FileSink::<u64>::open(Path::new(&dir)).expect("open the sink");
    let resume = match sink.committed_upper() {
        None => 0,
        Some(upper) => *upper.elements().first().expect("the writer never seals"),
    };
    println!("resuming at {resume}");
    let started = Instant::now();
    for commit in resume..commits {
        if started.elapsed() > WRITER_TIME_LIMIT {
            break;
        }
        sink.commit(&commit_updates(commit), &Antichain::from_elem(commit + 1))
            .expect("commit");
    }
}

/// Kills the writer when dropped, so a failing test leaves no process.
struct Writer {
    child: Child,
}

impl Writer {
    /// Starts the writer on `dir` and waits until it has opened it.
    fn start(dir: &Path, commits: u64) -> Writer {
        let mut child = Command::new(std::env::current_exe().expect("the test binary"))
            .args([
                "file_sink_writer",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(WRITER_DIR, dir)
            .env(WRITER_COMMITS, commits.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the writer");
        let stdout = child.stdout.take().expect("the writer's stdout");
        let writer = Writer { child };
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest prints "test file_sink_writer ... " on the same line first.
                if line.contains("resuming at ") {
                    let _ = ready_tx.send(line);
                }
            }
        });
        ready_rx
            .recv_timeout(WRITER_START_LIMIT)
            .expect("the writer opens the directory");
        writer
    }

    /// SIGKILL, then reap it.
    fn kill(mut self) {
        self.child.kill().expect("kill the writer");
        self.child.wait().expect("reap the writer");
    }

    /// Waits for the writer to finish by itself; it must succeed.
    fn finish(mut self) {
        let status = self.child.wait().expect("wait for the writer");
        assert!(status.success(), "the writer failed: {status}");
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Opens (and so recovers) the directory, checks that it holds exactly the
/// first `n` commits, whole and once each, and returns `n`.
fn committed_commits(dir: &Path) -> u64 {
    let sink = FileSink::<u64>::open(dir).expect("reopen after the kill");
    let commits = sink
        .committed_upper()
        .map_or(0, |upper| *upper.elements().first().expect("never sealed"));
    assert_eq!(sink.commits(), commits, "one commit per time");
    assert_eq!(
        std::fs::metadata(dir.join(DATA_FILE)).unwrap().len(),
        sink.committed_len(),
        "recovery cut the data file to the committed length"
    );
    drop(sink);
    let read = read_committed::<u64>(dir).expect("read back");
    let expected: Vec<_> = (0..commits).flat_map(commit_updates).collect();
    assert_eq!(read.len(), expected.len(), "after {commits} commits");
    assert!(
        read == expected,
        "the committed data is the first {commits} commits"
    );
    commits
}

/// A tiny deterministic generator for the kill points.
fn next_seeded(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    *state >> 33
}

#[test]
fn killed_writers_leave_whole_commits() {
    let dir = TempDir::new("kill");
    let mut seed = 0x5eed_f11e_0005_1c4e_u64;
    let mut commits = 0;
    let mut torn_tails = 0;
    for kill in 0..KILLS {
        let writer = Writer::start(dir.path(), u64::MAX);
        std::thread::sleep(Duration::from_millis(1 + next_seeded(&mut seed) % 60));
        writer.kill();
        let record_len = read_committed::<u64>(dir.path()).map(|updates| updates.len());
        let data_len = std::fs::metadata(dir.path().join(DATA_FILE)).unwrap().len();
        let before = commits;
        commits = committed_commits(dir.path());
        assert!(
            commits >= before,
            "kill {kill}: commits went back from {before} to {commits}"
        );
        let recovered_len = std::fs::metadata(dir.path().join(DATA_FILE)).unwrap().len();
        if data_len > recovered_len {
            torn_tails += 1;
        }
        assert!(record_len.is_ok(), "kill {kill}: {record_len:?}");
        eprintln!(
            "kill {kill}: {commits} commits, data file {data_len} bytes before recovery, {recovered_len} after"
        );
    }
    eprintln!("{torn_tails} of {KILLS} kills left an uncommitted tail");
    // A last writer, left to finish: twenty more commits, exactly.
    Writer::start(dir.path(), commits + 20).finish();
    assert_eq!(committed_commits(dir.path()), commits + 20);
}
