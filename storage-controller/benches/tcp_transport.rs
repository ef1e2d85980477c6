//! Throughput of replica responses over `TcpTransport` on loopback, against
//! a raw baseline in the same run: the same messages through an in-process
//! unbounded channel (what `InProcessTransport` gives).
//!
//! `cargo bench -p tidemark-storage-controller --bench tcp_transport`
//!
//! Each message is a `FrontierUppers` of 16 collections, as a replica
//! reports them; the figure is the time from the first send to the last
//! receive, per message (median of the rounds).

use std::time::{Duration, Instant};

use tidemark_storage_controller::protocol::{StorageCommand, StorageResponse, TimelyConfig};
use tidemark_storage_controller::tcp::{TcpConfig, TcpReplicaListener, TcpTransport};
use tidemark_storage_controller::transport::ReplicaTransport;
use tidemark_storage_types::GlobalId;
use timely::progress::Antichain;
use tokio::sync::mpsc;

const MESSAGES: usize = 50_000;
const IDS: u64 = 16;
const ROUNDS: usize = 5;

fn message(n: usize) -> StorageResponse<u64> {
    StorageResponse::FrontierUppers(
        (0..IDS)
            .map(|id| (GlobalId::User(id), Antichain::from_elem(n as u64)))
            .collect(),
    )
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

async fn raw_round() -> Duration {
    let (sender, mut receiver) = mpsc::unbounded_channel();
    let start = Instant::now();
    tokio::spawn(async move {
        for n in 0..MESSAGES {
            sender.send(message(n)).expect("receiver alive");
        }
    });
    for _ in 0..MESSAGES {
        receiver.recv().await.expect("sender sends all");
    }
    start.elapsed()
}

async fn tcp_round() -> Duration {
    let mut listener = TcpReplicaListener::<u64>::bind("127.0.0.1:0")
        .await
        .expect("loopback binds");
    let address = listener.local_addr().to_string();
    let transport = TcpTransport::<u64>::new(TcpConfig::default());
    let mut connection = transport.connect(&address);
    let config = TimelyConfig {
        process: 0,
        addresses: vec![address],
    };
    connection
        .commands
        .send(StorageCommand::CreateTimely { config, epoch: 1 })
        .expect("task alive");
    let session = listener.accept().await.expect("a session");
    let start = Instant::now();
    let responses = session.responses.clone();
    tokio::spawn(async move {
        for n in 0..MESSAGES {
            responses.send(message(n)).expect("connection open");
        }
    });
    for _ in 0..MESSAGES {
        connection.responses.recv().await.expect("connection open");
    }
    let elapsed = start.elapsed();
    drop(session);
    elapsed
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime starts");
    runtime.block_on(async {
        let mut raw = Vec::new();
        let mut tcp = Vec::new();
        for _ in 0..ROUNDS {
            raw.push(raw_round().await);
            tcp.push(tcp_round().await);
        }
        let per_message = |d: Duration| d.as_secs_f64() * 1e9 / MESSAGES as f64;
        let (raw, tcp) = (per_message(median(raw)), per_message(median(tcp)));
        println!(
            "replica responses ({IDS} uppers each), {MESSAGES} per round, median of {ROUNDS}:"
        );
        println!("  raw in-process channel: {raw:>10.0} ns/message");
        println!("  TcpTransport loopback:  {tcp:>10.0} ns/message");
        println!("  ratio tcp/raw:          {:>10.1}x", tcp / raw);
    });
}
