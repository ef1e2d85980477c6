//! The Prometheus endpoint of `bench --metrics` answers with the
//! documented metric names after a workload. (One test in this binary:
//! the metrics recorder is process-wide.)

use std::io::{Read, Write};
use std::time::Duration;

use tidemark::cli::bench::{BenchOptions, run};
use tidemark::observe::METRIC_NAMES;

fn scrape(address: std::net::SocketAddr) -> String {
    let mut stream = std::net::TcpStream::connect(address).expect("the exporter listens");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("a response");
    response
}

#[tokio::test(flavor = "multi_thread")]
async fn the_metrics_endpoint_lists_every_documented_metric_after_a_workload() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let options = BenchOptions {
        duration: Duration::from_millis(300),
        writers: 2,
        batch: 10,
        metrics: Some(address),
        progress: false,
        ..BenchOptions::default()
    };
    run("memory://metrics", &options).await.unwrap();
    let response = tokio::task::spawn_blocking(move || scrape(address))
        .await
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    for name in METRIC_NAMES {
        assert!(response.contains(name), "{name} missing from:\n{response}");
    }
    assert!(
        response.contains(r#"tidemark_backend_operations_total{backend="memory",operation="compare_and_append",outcome="ok"}"#),
        "{response}"
    );
    assert!(response.contains(r#"direction="written""#), "{response}");
}
