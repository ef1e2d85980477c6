//! A writer process killed with `SIGKILL` in the middle of a stream of
//! atomic multi-table calls, ten times, on the S3 server
//! (`TIDEMARK_TEST_S3_ENDPOINT`): after each recovery every call is wholly
//! present or absent (`controller-conformance`'s `crash` module). The
//! writer is this binary again, running the ignored `atomic_writer` test on
//! the bucket and prefix it is given.

mod support;

use std::process::Command;

use support::{S3Factory, config_for, ensure_bucket, fresh_prefix, test_endpoint};

/// Names the writer's bucket and prefix (`BUCKET/PREFIX`); unset,
/// `atomic_writer` does nothing.
const STORE_ENV: &str = "TIDEMARK_ATOMIC_KILL_STORE";

fn factory_on(endpoint: &str, bucket: &str, prefix: &str) -> S3Factory {
    S3Factory {
        config: config_for(endpoint, bucket, prefix),
        clock: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomic_calls_stay_whole_when_writers_are_killed() {
    let Some(endpoint) = test_endpoint("s3 atomic kill test") else {
        return;
    };
    let bucket = format!("tm-{}", uuid::Uuid::new_v4().simple());
    ensure_bucket(&endpoint, &bucket).await;
    let prefix = fresh_prefix("kill");
    let factory = factory_on(&endpoint, &bucket, &prefix);
    let store = format!("{bucket}/{prefix}");
    tidemark_controller_conformance::crash::killed_writers_leave_each_call_whole(&factory, || {
        let mut command = Command::new(std::env::current_exe().expect("this test binary"));
        command
            .args(["--exact", "atomic_writer", "--ignored", "--nocapture"])
            .args(["--test-threads", "1"])
            .env(STORE_ENV, &store);
        command
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the writer process that atomic_calls_stay_whole_when_writers_are_killed starts and kills"]
async fn atomic_writer() {
    let (Ok(store), Some(endpoint)) = (std::env::var(STORE_ENV), test_endpoint("atomic writer"))
    else {
        return;
    };
    let Some((bucket, prefix)) = store.split_once('/') else {
        panic!("{STORE_ENV} is BUCKET/PREFIX, not {store}");
    };
    let factory = factory_on(&endpoint, bucket, prefix);
    tidemark_controller_conformance::crash::write_atomic_calls_until_killed(&factory).await;
}
