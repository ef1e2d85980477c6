//! `tidemark doctor`: passes on the test S3 server and PostgreSQL, and
//! fails, saying why, on stores that ignore or race conditional writes.

mod stub;
mod support;

use serde_json::Value;
use tidemark::cli::doctor::{DoctorOptions, run};

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|check| check["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {report:#}"))
}

/// Runs the binary's doctor on `url` and returns its exit code and JSON.
async fn doctor_binary(url: String) -> (i32, Value) {
    tokio::task::spawn_blocking(move || {
        let output = support::run_binary(
            &["doctor", &url, "--rounds", "3", "--json"],
            std::time::Duration::from_secs(120),
        );
        let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
            panic!(
                "doctor printed no JSON ({err}): {} / {}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
        });
        (output.status.code().expect("an exit code"), report)
    })
    .await
    .unwrap()
}

#[cfg(feature = "s3")]
#[tokio::test(flavor = "multi_thread")]
async fn doctor_passes_on_the_test_s3_server() {
    let Some(endpoint) = support::s3_endpoint("doctor_s3") else {
        return;
    };
    let bucket = support::fresh_bucket(&endpoint).await;
    let (code, report) = doctor_binary(support::s3_url(&endpoint, &bucket)).await;
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["safe"], true);
    for name in [
        "put and get",
        "etags returned",
        "if-none-match enforced",
        "if-match enforced",
        "if-none-match atomic under a race",
        "if-match atomic under a race",
    ] {
        assert_eq!(check(&report, name)["ok"], true, "{name}: {report:#}");
    }
    for operation in ["put", "get", "conditional_put"] {
        let latency = &report["latency"][operation];
        assert!(
            latency["count"].as_u64().unwrap() > 0,
            "{operation}: {latency}"
        );
        assert!(latency["p99_ms"].as_f64().unwrap() >= latency["p50_ms"].as_f64().unwrap());
    }
    // What doctor wrote, it deleted.
    let listed = support::s3_client(&endpoint)
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.key_count(), Some(0), "{listed:?}");
}

#[cfg(feature = "s3")]
#[tokio::test(flavor = "multi_thread")]
async fn doctor_fails_on_a_store_that_ignores_conditional_writes() {
    let endpoint = stub::start(stub::Misbehaviour::IgnoreConditions).await;
    let (code, report) = doctor_binary(support::s3_url(&endpoint, "stub")).await;
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["safe"], false);
    let enforced = check(&report, "if-none-match enforced");
    assert_eq!(enforced["ok"], false);
    assert!(
        enforced["detail"]
            .as_str()
            .unwrap()
            .contains("ignores the condition"),
        "{enforced}"
    );
    assert_eq!(check(&report, "if-match enforced")["ok"], false);
}

#[cfg(feature = "s3")]
#[tokio::test(flavor = "multi_thread")]
async fn doctor_fails_on_a_store_whose_conditional_writes_race() {
    let endpoint = stub::start(stub::Misbehaviour::RacyConditions).await;
    let url = support::s3_url(&endpoint, "stub");
    let report =
        serde_json::to_value(run(&url, DoctorOptions { rounds: 2 }).await.unwrap()).unwrap();
    assert_eq!(report["safe"], false, "{report:#}");
    // One writer at a time, the store looks right ...
    for name in [
        "put and get",
        "etags returned",
        "if-none-match enforced",
        "if-match enforced",
    ] {
        assert_eq!(check(&report, name)["ok"], true, "{name}: {report:#}");
    }
    // ... but racing writers all win.
    for name in [
        "if-none-match atomic under a race",
        "if-match atomic under a race",
    ] {
        let raced = check(&report, name);
        assert_eq!(raced["ok"], false, "{name}: {report:#}");
        assert!(
            raced["detail"].as_str().unwrap().contains("not atomic"),
            "{raced}"
        );
    }
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread")]
async fn doctor_passes_on_the_test_postgres() {
    let Some(store) = support::postgres_store("doctor_postgres").await else {
        return;
    };
    let (code, report) = doctor_binary(store.url.clone()).await;
    assert_eq!(code, 0, "{report:#}");
    for name in [
        "server reachable",
        "server version",
        "fsync",
        "synchronous_commit",
        "default_transaction_isolation",
        "schema version",
    ] {
        assert_eq!(check(&report, name)["ok"], true, "{name}: {report:#}");
    }
    assert!(
        check(&report, "schema version")["detail"]
            .as_str()
            .unwrap()
            .contains("as expected"),
        "{report:#}"
    );
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread")]
async fn doctor_fails_on_an_unreachable_postgres_and_says_why() {
    // A loopback port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, report) = doctor_binary(format!("postgres://postgres@127.0.0.1:{port}/test")).await;
    assert_eq!(code, 1, "{report:#}");
    let reachable = check(&report, "server reachable");
    assert_eq!(reachable["ok"], false);
    assert!(
        reachable["detail"]
            .as_str()
            .unwrap()
            .contains("cannot connect"),
        "{reachable}"
    );
}

#[tokio::test]
async fn doctor_refuses_to_call_memory_safe_and_names_bad_input() {
    let report = run("memory://doctor", DoctorOptions::default())
        .await
        .unwrap();
    assert!(!report.safe);
    assert_eq!(report.checks[0].name, "durable");
    let err = run("memory://doctor", DoctorOptions { rounds: 0 })
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid argument: doctor needs at least one race round: rounds=0"
    );
    let err = run("ftp://x", DoctorOptions::default()).await.unwrap_err();
    assert!(err.to_string().contains("unknown backend scheme"), "{err}");
}
