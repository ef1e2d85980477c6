use tidemark_storage_types::GlobalId;
use timely::progress::Antichain;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::protocol::TimelyConfig;

/// Fails a test instead of letting it hang.
async fn soon<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), future)
        .await
        .expect("the step finished in time")
}

fn create_timely(epoch: u64) -> StorageCommand<u64> {
    StorageCommand::CreateTimely {
        config: TimelyConfig {
            process: 0,
            addresses: vec!["127.0.0.1:0".into()],
        },
        epoch,
    }
}

async fn listener() -> TcpReplicaListener<u64> {
    TcpReplicaListener::bind("127.0.0.1:0").await.unwrap()
}

/// Connects a raw socket to `listener`, sends `bytes`, and returns the
/// listener's verdict and everything the listener sent before closing.
async fn send_raw(listener: &mut TcpReplicaListener<u64>, bytes: &[u8]) -> (WireError, Vec<u8>) {
    let mut socket = TcpStream::connect(listener.local_addr()).await.unwrap();
    socket.write_all(bytes).await.unwrap();
    let refused = soon(listener.next_attempt())
        .await
        .expect("listener alive")
        .expect_err("the connection is refused");
    assert_eq!(refused.peer, socket.local_addr().unwrap());
    // Reaching the end of the stream (or a reset, if the listener left
    // bytes unread) shows the listener closed it.
    let mut received = Vec::new();
    let mut buffer = [0; 64];
    loop {
        match soon(socket.read(&mut buffer)).await {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(err) => panic!("reading from the listener: {err}"),
        }
    }
    (refused.error, received)
}

fn frame(command: &StorageCommand<u64>) -> Vec<u8> {
    wire::encode_frame(command, wire::DEFAULT_MAX_FRAME_BYTES).unwrap()
}

#[tokio::test]
async fn garbage_is_refused_and_the_connection_closed() {
    let mut listener = listener().await;
    let (err, received) = send_raw(&mut listener, b"GET / HT").await;
    assert!(matches!(err, WireError::BadMagic { .. }), "{err:?}");
    assert_eq!(received, wire::handshake(), "only the listener's handshake");
}

#[tokio::test]
async fn another_version_is_refused_and_the_connection_closed() {
    let mut listener = listener().await;
    let (err, _) = send_raw(&mut listener, b"TDMK\0\0\0\x07").await;
    assert_eq!(
        err.to_string(),
        "protocol version mismatch: expected=2 got=7"
    );
}

#[tokio::test]
async fn a_first_command_other_than_create_timely_is_refused() {
    let mut listener = listener().await;
    let mut bytes = wire::handshake().to_vec();
    bytes.extend(frame(&StorageCommand::InitializationComplete));
    let (err, _) = send_raw(&mut listener, &bytes).await;
    assert_eq!(
        err.to_string(),
        "first command is not create-timely: got=initialization-complete"
    );
}

#[tokio::test]
async fn a_peer_closing_after_the_handshake_is_refused() {
    let mut listener = listener().await;
    let mut socket = TcpStream::connect(listener.local_addr()).await.unwrap();
    socket.write_all(&wire::handshake()).await.unwrap();
    socket.shutdown().await.unwrap();
    let refused = soon(listener.next_attempt()).await.unwrap().unwrap_err();
    assert!(
        matches!(refused.error, WireError::NoFirstCommand),
        "{refused}"
    );
}

#[tokio::test]
async fn a_connection_cut_mid_frame_is_refused() {
    let mut listener = listener().await;
    let mut bytes = wire::handshake().to_vec();
    let first = frame(&create_timely(1));
    bytes.extend_from_slice(&first[..first.len() - 2]);
    let mut socket = TcpStream::connect(listener.local_addr()).await.unwrap();
    socket.write_all(&bytes).await.unwrap();
    socket.shutdown().await.unwrap();
    let refused = soon(listener.next_attempt()).await.unwrap().unwrap_err();
    assert!(
        matches!(
            refused.error,
            WireError::Truncated {
                part: "frame payload",
                ..
            }
        ),
        "{refused}"
    );
}

#[tokio::test]
async fn an_oversized_frame_is_refused() {
    let config = TcpConfig {
        max_frame_bytes: 1024,
        ..TcpConfig::default()
    };
    let mut listener = TcpReplicaListener::<u64>::bind_with("127.0.0.1:0", config)
        .await
        .unwrap();
    let mut bytes = wire::handshake().to_vec();
    bytes.extend_from_slice(&(1u32 << 30).to_be_bytes());
    let (err, _) = send_raw(&mut listener, &bytes).await;
    assert_eq!(err.to_string(), "frame too large: max=1024 got=1073741824");
}

#[tokio::test]
async fn a_silent_peer_times_out() {
    let config = TcpConfig {
        handshake_timeout: Duration::from_millis(20),
        ..TcpConfig::default()
    };
    let mut listener = TcpReplicaListener::<u64>::bind_with("127.0.0.1:0", config)
        .await
        .unwrap();
    let (err, _) = send_raw(&mut listener, b"").await;
    assert!(
        matches!(
            err,
            WireError::Timeout {
                during: "handshake",
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_refused_peer_does_not_stop_the_listener() {
    let mut listener = listener().await;
    send_raw(&mut listener, b"garbage!").await;
    let transport = TcpTransport::<u64>::new(TcpConfig::default());
    let connection = transport.connect(&listener.local_addr().to_string());
    connection.commands.send(create_timely(3)).unwrap();
    let mut session = soon(listener.accept()).await.unwrap();
    assert_eq!(soon(session.commands.recv()).await, Some(create_timely(3)));
}

#[tokio::test]
async fn commands_and_responses_flow_until_the_controller_lets_go() {
    let mut listener = listener().await;
    let transport = TcpTransport::<u64>::new(TcpConfig::default());
    let mut connection = transport.connect(&listener.local_addr().to_string());
    connection.commands.send(create_timely(1)).unwrap();
    connection
        .commands
        .send(StorageCommand::InitializationComplete)
        .unwrap();
    let mut session = soon(AcceptSessions::accept(&mut listener)).await.unwrap();
    assert_eq!(soon(session.commands.recv()).await, Some(create_timely(1)));
    assert_eq!(
        soon(session.commands.recv()).await,
        Some(StorageCommand::InitializationComplete)
    );
    let upper = StorageResponse::FrontierUppers(vec![(GlobalId::User(1), Antichain::from_elem(4))]);
    session.responses.send(upper.clone()).unwrap();
    assert_eq!(soon(connection.responses.recv()).await, Some(upper));
    // The controller severs: the replica sees its command channel close.
    drop(connection);
    assert_eq!(soon(session.commands.recv()).await, None);
}

#[tokio::test]
async fn a_replica_of_another_version_closes_the_connection() {
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = server.local_addr().unwrap().to_string();
    let transport = TcpTransport::<u64>::new(TcpConfig::default());
    let mut connection = transport.connect(&address);
    connection.commands.send(create_timely(1)).unwrap();
    let (mut socket, _) = soon(server.accept()).await.unwrap();
    // Version 1: before statistics carried a frontier lag.
    socket.write_all(b"TDMK\0\0\0\x01").await.unwrap();
    let mut received = Vec::new();
    soon(socket.read_to_end(&mut received)).await.unwrap();
    assert_eq!(received, wire::handshake(), "no command crossed");
    assert_eq!(soon(connection.responses.recv()).await, None);
}

#[tokio::test]
async fn an_oversized_response_closes_the_connection() {
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = server.local_addr().unwrap().to_string();
    let transport = TcpTransport::<u64>::new(TcpConfig {
        max_frame_bytes: 64,
        ..TcpConfig::default()
    });
    let mut connection = transport.connect(&address);
    let (mut socket, _) = soon(server.accept()).await.unwrap();
    let mut bytes = wire::handshake().to_vec();
    bytes.extend_from_slice(&u32::MAX.to_be_bytes());
    socket.write_all(&bytes).await.unwrap();
    assert_eq!(soon(connection.responses.recv()).await, None);
}

#[tokio::test]
async fn an_unreachable_replica_gives_a_closed_connection() {
    let port = {
        let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
        probe.local_addr().unwrap().port()
    };
    let address = format!("127.0.0.1:{port}");
    let transport = TcpTransport::<u64>::new(TcpConfig::default());
    let mut connection = transport.connect(&address);
    assert_eq!(soon(connection.responses.recv()).await, None);
    // The reason, as the background task logs it.
    let (_commands, receiver) = mpsc::unbounded_channel::<StorageCommand<u64>>();
    let (responses, _keep) = mpsc::unbounded_channel();
    let err = connect_and_serve(&address, TcpConfig::default(), receiver, &responses)
        .await
        .unwrap_err();
    assert!(matches!(err, WireError::Io(_)), "{err:?}");
    assert!(err.to_string().starts_with("connection failed: "), "{err}");
}

#[test]
fn connecting_outside_a_runtime_gives_a_closed_connection() {
    let transport = TcpTransport::<u64>::new(TcpConfig::default());
    let mut connection = transport.connect("127.0.0.1:1");
    assert!(connection.responses.try_recv().is_err());
    assert!(connection.commands.is_closed());
}
