//! `tidemark bench`: with a tiny duration it prints every figure, on each
//! backend; it refuses stores off loopback and bad options.

mod support;

use std::time::Duration;

use serde_json::Value;
use tidemark::cli::ToolError;
use tidemark::cli::bench::{BenchOptions, check_loopback, run};

const TINY: [&str; 10] = [
    "--duration",
    "0.3",
    "--rate",
    "20",
    "--shards",
    "2",
    "--writers",
    "3",
    "--batch",
    "10",
];

/// Every figure is there, and as many operations ran as were scheduled.
fn check_figures(report: &Value, raw_writes: &[&str], raw_read: &str) {
    let figure = |figures: &Value| {
        let latency = &figures["latency"];
        assert!(latency["count"].as_u64().unwrap() > 0, "{figures}");
        let p50 = latency["p50_ms"].as_f64().unwrap();
        let p99 = latency["p99_ms"].as_f64().unwrap();
        assert!(p50 > 0.0 && p99 >= p50, "{figures}");
        assert!(
            figures["throughput_per_s"].as_f64().unwrap() > 0.0,
            "{figures}"
        );
        assert_eq!(figures["errors"], 0, "{figures}");
    };
    figure(&report["tidemark"]["append"]);
    figure(&report["tidemark"]["snapshot"]);
    // 3 writers x 0.3 s x 20/s = 18 scheduled appends, all completed.
    assert_eq!(
        report["tidemark"]["append"]["latency"]["count"], 18,
        "{report:#}"
    );
    let ratios = report["ratios"].as_array().unwrap();
    assert_eq!(ratios.len(), raw_writes.len() * 2, "{report:#}");
    for write in raw_writes {
        figure(&report["raw"][*write]);
        figure(&report["raw"][format!("{raw_read} (during {write})")]);
        let ratio = ratios
            .iter()
            .find(|ratio| ratio["tidemark"] == "append" && ratio["raw"] == *write)
            .unwrap_or_else(|| panic!("no append ratio against {write}: {report:#}"));
        for field in ["p50", "p99", "throughput"] {
            assert!(ratio[field].as_f64().unwrap() > 0.0, "{ratio}");
        }
    }
}

async fn bench_binary(url: String) -> Value {
    tokio::task::spawn_blocking(move || {
        let mut args = vec!["bench", url.as_str(), "--json"];
        args.extend(TINY);
        support::run_json(&args)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_bench_prints_every_figure() {
    let report = bench_binary("memory://bench".to_string()).await;
    assert_eq!(report["backend"], "memory");
    check_figures(&report, &["push"], "clone");
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread")]
async fn postgres_bench_prints_every_figure_and_leaves_no_data() {
    let Some(store) = support::postgres_store("postgres_bench").await else {
        return;
    };
    let report = bench_binary(store.url.clone()).await;
    check_figures(&report, &["insert", "copy"], "select");
    assert!(
        store.backend.list_shards().await.unwrap().is_empty(),
        "bench left shards"
    );
}

#[cfg(feature = "s3")]
#[tokio::test(flavor = "multi_thread")]
async fn s3_bench_prints_every_figure_and_leaves_no_shards() {
    let Some(store) = support::s3_store("s3_bench").await else {
        return;
    };
    let report = bench_binary(store.url.clone()).await;
    check_figures(&report, &["put"], "get");
    assert!(
        store.backend.list_shards().await.unwrap().is_empty(),
        "bench left shards"
    );
}

#[test]
fn bench_refuses_stores_off_loopback() {
    let err = check_loopback("postgres://u@db.example.com/x", false).unwrap_err();
    assert!(matches!(err, ToolError::NotLoopback { .. }), "{err}");
    assert!(err.to_string().ends_with("host=db.example.com"), "{err}");
    let err = check_loopback("s3://bucket/prefix?region=eu-west-1", false).unwrap_err();
    assert!(err.to_string().contains("no endpoint"), "{err}");
    check_loopback("s3://b/p?endpoint=http://127.0.0.1:9000", false).unwrap();
    check_loopback("postgres://u@localhost/x", false).unwrap();
    check_loopback("postgres://u@[::1]:5432/x", false).unwrap();
    check_loopback("postgres://u@db.example.com/x", true).unwrap();
    // The binary refuses before it touches the store.
    let output = support::run_binary(
        &[
            "bench",
            "postgres://u@db.example.com/x",
            "--duration",
            "0.1",
        ],
        Duration::from_secs(30),
    );
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not on loopback"));
}

#[tokio::test]
async fn bench_names_bad_options() {
    let bad = [
        BenchOptions {
            shards: 0,
            ..BenchOptions::default()
        },
        BenchOptions {
            writers: 0,
            ..BenchOptions::default()
        },
        BenchOptions {
            batch: 0,
            ..BenchOptions::default()
        },
        BenchOptions {
            duration: Duration::ZERO,
            ..BenchOptions::default()
        },
        BenchOptions {
            rate: 0.0,
            ..BenchOptions::default()
        },
        BenchOptions {
            metrics: Some("0.0.0.0:9464".parse().unwrap()),
            duration: Duration::from_millis(10),
            ..BenchOptions::default()
        },
    ];
    for options in bad {
        let err = run("memory://bench-bad", &options).await.unwrap_err();
        assert!(
            matches!(err, ToolError::InvalidArgument(_)),
            "{options:?}: {err}"
        );
    }
}
