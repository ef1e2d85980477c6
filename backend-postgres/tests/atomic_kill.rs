//! A writer process killed with `SIGKILL` in the middle of a stream of
//! atomic multi-table calls, ten times, on PostgreSQL: after each recovery
//! every call is wholly present or absent (`controller-conformance`'s
//! `crash` module). The writer is this binary again, running the ignored
//! `atomic_writer` test on the schema it is given.

mod support;

use std::mem::ManuallyDrop;
use std::process::Command;

use support::{PostgresFactory, test_url, unique_schema};
use tidemark_backend_postgres::PostgresConfig;

/// Names the writer's schema; unset, `atomic_writer` does nothing.
const SCHEMA_ENV: &str = "TIDEMARK_ATOMIC_KILL_SCHEMA";

fn factory_on(url: &str, schema: String) -> PostgresFactory {
    PostgresFactory {
        config: PostgresConfig::from_url(url)
            .expect("TIDEMARK_TEST_POSTGRES_URL is a valid postgres url")
            .with_schema(schema)
            .with_pool_size(4),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomic_calls_stay_whole_when_writers_are_killed() {
    let Some(url) = test_url("postgres atomic kill test") else {
        return;
    };
    let schema = unique_schema("tmkill");
    let factory = factory_on(&url, schema.clone());
    tidemark_controller_conformance::crash::killed_writers_leave_each_call_whole(&factory, || {
        let mut command = Command::new(std::env::current_exe().expect("this test binary"));
        command
            .args(["--exact", "atomic_writer", "--ignored", "--nocapture"])
            .args(["--test-threads", "1"])
            .env(SCHEMA_ENV, &schema);
        command
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the writer process that atomic_calls_stay_whole_when_writers_are_killed starts and kills"]
async fn atomic_writer() {
    let (Ok(schema), Some(url)) = (std::env::var(SCHEMA_ENV), test_url("atomic writer")) else {
        return;
    };
    // SUBTLE: the schema belongs to the parent test, which drops it.
    let factory = ManuallyDrop::new(factory_on(&url, schema));
    tidemark_controller_conformance::crash::write_atomic_calls_until_killed(&*factory).await;
}
