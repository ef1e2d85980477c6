//! A seeded TCP fault proxy: sits between a backend and its server
//! (PostgreSQL, an S3 server) on loopback and breaks the connections the
//! way networks do.
//!
//! The proxy forwards bytes both ways. It sees a connection as a sequence
//! of *exchanges*: an exchange starts with the first bytes the client sends
//! after the server last answered (or after connecting), and its response is
//! whatever the server sends back. Both PostgreSQL's protocol and HTTP/1.1
//! alternate that way. For each exchange the proxy decides, from its seeded
//! RNG or from an armed one-shot trigger, whether to inject a [`Fault`]:
//!
//! - [`Fault::ResetBeforeRequest`]: the request is dropped and the
//!   connection reset; the server never saw it.
//! - [`Fault::ResetAfterRequest`]: the request reaches the server, which
//!   acts on it; its response is dropped and the connection reset.
//! - [`Fault::ResetMidResponse`]: part of the response reaches the client,
//!   then the connection is reset.
//! - [`Fault::Stall`]: the request is held for a while (hundreds of
//!   milliseconds) before it is forwarded.
//! - [`Fault::Delay`]: the request is held for a few milliseconds.
//!
//! A reset is a real TCP RST (zero linger) on both sides. The proxy binds
//! only `127.0.0.1` and stops (closing every connection) when dropped.
//!
//! SUBTLE: under concurrency the RNG is drawn in the order exchanges arrive,
//! so a seed fixes the fault mix but not which call meets which fault.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Bytes read per chunk.
const CHUNK: usize = 16 * 1024;

/// A fault the proxy injects into one exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// Reset the connection instead of forwarding the request.
    ResetBeforeRequest,
    /// Forward the request, drop the response, reset the connection.
    ResetAfterRequest,
    /// Forward the request and part of the response, then reset.
    ResetMidResponse,
    /// Hold the request for a long while, then forward it.
    Stall,
    /// Hold the request for a few milliseconds, then forward it.
    Delay,
}

impl Fault {
    /// Every fault kind.
    pub const ALL: [Fault; 5] = [
        Fault::ResetBeforeRequest,
        Fault::ResetAfterRequest,
        Fault::ResetMidResponse,
        Fault::Stall,
        Fault::Delay,
    ];

    /// Whether the fault breaks the connection (the client sees an error).
    #[must_use]
    pub fn resets(self) -> bool {
        matches!(
            self,
            Fault::ResetBeforeRequest | Fault::ResetAfterRequest | Fault::ResetMidResponse
        )
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Fault::ResetBeforeRequest => "reset before request",
            Fault::ResetAfterRequest => "reset after request",
            Fault::ResetMidResponse => "reset mid response",
            Fault::Stall => "stall",
            Fault::Delay => "delay",
        };
        f.write_str(name)
    }
}

/// How often the proxy injects which fault, and how long holds last.
#[derive(Clone, Debug)]
pub struct FaultPlan {
    /// The RNG seed.
    pub seed: u64,
    /// The chance that an exchange meets a fault, in `[0, 1]`.
    pub fault_probability: f64,
    /// Relative weights of the faults, by kind (absent = never).
    pub weights: BTreeMap<Fault, u32>,
    /// How long a [`Fault::Stall`] holds a request.
    pub stall: Duration,
    /// The longest a [`Fault::Delay`] holds a request.
    pub max_delay: Duration,
}

impl FaultPlan {
    /// A plan that injects nothing until a trigger is armed.
    #[must_use]
    pub fn quiet() -> FaultPlan {
        FaultPlan {
            seed: 0,
            fault_probability: 0.0,
            weights: BTreeMap::new(),
            stall: Duration::from_millis(400),
            max_delay: Duration::from_millis(20),
        }
    }

    /// A plan that gives every exchange a `fault_probability` chance of one
    /// of the five faults: resets more often than holds.
    #[must_use]
    pub fn seeded(seed: u64, fault_probability: f64) -> FaultPlan {
        FaultPlan {
            seed,
            fault_probability,
            weights: BTreeMap::from([
                (Fault::ResetBeforeRequest, 3),
                (Fault::ResetAfterRequest, 3),
                (Fault::ResetMidResponse, 3),
                (Fault::Stall, 1),
                (Fault::Delay, 2),
            ]),
            ..FaultPlan::quiet()
        }
    }
}

/// A one-shot fault for the next exchange whose request contains `needle`.
#[derive(Clone, Debug)]
struct Trigger {
    needle: Vec<u8>,
    fault: Fault,
}

/// What the proxy shares between its connections.
#[derive(Debug)]
struct Shared {
    plan: FaultPlan,
    rng: Mutex<SmallRng>,
    armed: Mutex<Option<Trigger>>,
    injected: Mutex<BTreeMap<Fault, u64>>,
    exchanges: Mutex<u64>,
    enabled: AtomicBool,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking connection task leaves plain counters behind: still usable.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// The fault for an exchange whose request starts with `request`.
    fn decide(&self, request: &[u8]) -> Option<Fault> {
        *locked(&self.exchanges) += 1;
        let armed = {
            let mut armed = locked(&self.armed);
            match armed.as_ref() {
                Some(trigger) if contains(request, &trigger.needle) => {
                    armed.take().map(|trigger| trigger.fault)
                }
                _ => None,
            }
        };
        let fault = armed.or_else(|| {
            if !self.enabled.load(Ordering::SeqCst) {
                return None;
            }
            let mut rng = locked(&self.rng);
            if !rng.random_bool(self.plan.fault_probability.clamp(0.0, 1.0)) {
                return None;
            }
            let total: u32 = self.plan.weights.values().sum();
            if total == 0 {
                return None;
            }
            let mut pick = rng.random_range(0..total);
            self.plan.weights.iter().find_map(|(fault, weight)| {
                if pick < *weight {
                    Some(*fault)
                } else {
                    pick -= weight;
                    None
                }
            })
        })?;
        *locked(&self.injected).entry(fault).or_insert(0) += 1;
        Some(fault)
    }

    fn delay(&self) -> Duration {
        let max = self.plan.max_delay.as_micros().max(1) as u64;
        Duration::from_micros(locked(&self.rng).random_range(0..max))
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || haystack
            .windows(needle.len())
            .any(|window| window == needle)
}

/// A running fault proxy; stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    address: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy on a free `127.0.0.1` port forwarding to `upstream`.
    ///
    /// # Errors
    ///
    /// The listener could not be bound.
    pub async fn start(upstream: SocketAddr, plan: FaultPlan) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let address = listener.local_addr()?;
        let shared = Arc::new(Shared {
            rng: Mutex::new(SmallRng::seed_from_u64(plan.seed)),
            plan,
            armed: Mutex::new(None),
            injected: Mutex::new(BTreeMap::new()),
            exchanges: Mutex::new(0),
            enabled: AtomicBool::new(true),
        });
        let accept = tokio::spawn(accept_loop(listener, upstream, Arc::clone(&shared)));
        Ok(FaultProxy {
            address,
            shared,
            accept,
        })
    }

    /// The proxy's address (`127.0.0.1:PORT`).
    #[must_use]
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Turns the random faults on or off (armed triggers still fire).
    pub fn set_random_faults(&self, enabled: bool) {
        self.shared.enabled.store(enabled, Ordering::SeqCst);
    }

    /// Arms a one-shot `fault` for the next exchange whose first request
    /// bytes contain `needle` (replacing any armed trigger).
    pub fn arm(&self, needle: &[u8], fault: Fault) {
        *locked(&self.shared.armed) = Some(Trigger {
            needle: needle.to_vec(),
            fault,
        });
    }

    /// Whether an armed trigger has not fired yet.
    #[must_use]
    pub fn is_armed(&self) -> bool {
        locked(&self.shared.armed).is_some()
    }

    /// Faults injected so far, by kind.
    #[must_use]
    pub fn injected(&self) -> BTreeMap<Fault, u64> {
        locked(&self.shared.injected).clone()
    }

    /// Exchanges seen so far.
    #[must_use]
    pub fn exchanges(&self) -> u64 {
        *locked(&self.shared.exchanges)
    }

    /// One line: exchanges and faults injected per kind.
    #[must_use]
    pub fn report(&self) -> String {
        let injected = self.injected();
        let kinds: Vec<String> = Fault::ALL
            .iter()
            .map(|fault| format!("{fault}={}", injected.get(fault).copied().unwrap_or(0)))
            .collect();
        format!("exchanges={} faults: {}", self.exchanges(), kinds.join(" "))
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                let shared = Arc::clone(&shared);
                connections.spawn(async move {
                    // A connection the upstream refuses is closed at once.
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        relay(client, server, &shared).await;
                    }
                });
            }
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Resets both sides of a connection (RST, not FIN).
fn reset(client: TcpStream, server: TcpStream) {
    let _ = client.set_zero_linger();
    let _ = server.set_zero_linger();
    drop(client);
    drop(server);
}

/// What the relay owes the current response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    Nothing,
    DropResponse,
    CutResponse,
}

async fn relay(mut client: TcpStream, mut server: TcpStream, shared: &Shared) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let mut from_client = vec![0u8; CHUNK];
    let mut from_server = vec![0u8; CHUNK];
    // True once the server has answered: the next client bytes start an
    // exchange.
    let mut awaiting_request = true;
    let mut pending = Pending::Nothing;
    loop {
        tokio::select! {
            read = client.read(&mut from_client) => {
                let Ok(count @ 1..) = read else { break };
                let request = &from_client[..count];
                if awaiting_request {
                    awaiting_request = false;
                    match shared.decide(request) {
                        Some(Fault::ResetBeforeRequest) => return reset(client, server),
                        Some(Fault::ResetAfterRequest) => pending = Pending::DropResponse,
                        Some(Fault::ResetMidResponse) => pending = Pending::CutResponse,
                        Some(Fault::Stall) => tokio::time::sleep(shared.plan.stall).await,
                        Some(Fault::Delay) => tokio::time::sleep(shared.delay()).await,
                        None => {}
                    }
                }
                if server.write_all(request).await.is_err() {
                    break;
                }
            }
            read = server.read(&mut from_server) => {
                let Ok(count @ 1..) = read else { break };
                match pending {
                    Pending::DropResponse => return reset(client, server),
                    Pending::CutResponse => {
                        let _ = client.write_all(&from_server[..count / 2]).await;
                        let _ = client.flush().await;
                        return reset(client, server);
                    }
                    Pending::Nothing => {}
                }
                awaiting_request = true;
                if client.write_all(&from_server[..count]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = client.shutdown().await;
    let _ = server.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server that answers each read with the same bytes.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 1024];
                    while let Ok(count @ 1..) = stream.read(&mut buffer).await {
                        if stream.write_all(&buffer[..count]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        address
    }

    async fn round_trip(address: SocketAddr, message: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect(address).await?;
        stream.write_all(message).await?;
        let mut answer = vec![0u8; message.len()];
        stream.read_exact(&mut answer).await?;
        Ok(answer)
    }

    #[tokio::test]
    async fn a_quiet_proxy_forwards_both_ways() {
        let proxy = FaultProxy::start(echo_server().await, FaultPlan::quiet())
            .await
            .unwrap();
        assert_eq!(
            round_trip(proxy.address(), b"hello").await.unwrap(),
            b"hello"
        );
        assert!(proxy.injected().is_empty());
        assert_eq!(proxy.exchanges(), 1);
    }

    #[tokio::test]
    async fn an_armed_reset_fires_once_on_the_matching_request() {
        let proxy = FaultProxy::start(echo_server().await, FaultPlan::quiet())
            .await
            .unwrap();
        proxy.arm(b"COMMIT", Fault::ResetAfterRequest);
        assert_eq!(
            round_trip(proxy.address(), b"select").await.unwrap(),
            b"select"
        );
        assert!(
            proxy.is_armed(),
            "a request without the needle does not fire"
        );
        let err = round_trip(proxy.address(), b"COMMIT").await.unwrap_err();
        assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof
            ),
            "{err}"
        );
        assert!(!proxy.is_armed());
        assert_eq!(
            round_trip(proxy.address(), b"COMMIT").await.unwrap(),
            b"COMMIT"
        );
        assert_eq!(
            proxy.injected(),
            BTreeMap::from([(Fault::ResetAfterRequest, 1)])
        );
    }

    #[tokio::test]
    async fn a_mid_response_reset_delivers_part_of_the_answer() {
        let proxy = FaultProxy::start(echo_server().await, FaultPlan::quiet())
            .await
            .unwrap();
        proxy.arm(b"", Fault::ResetMidResponse);
        let mut stream = TcpStream::connect(proxy.address()).await.unwrap();
        stream.write_all(b"0123456789").await.unwrap();
        let mut received = Vec::new();
        let outcome = stream.read_to_end(&mut received).await;
        assert!(received.len() < 10, "got {received:?}");
        assert!(
            outcome.is_err() || received.len() < 10,
            "the client must not get the whole answer"
        );
    }

    #[tokio::test]
    async fn a_seeded_plan_injects_every_kind() {
        let proxy = FaultProxy::start(echo_server().await, FaultPlan::seeded(7, 0.5))
            .await
            .unwrap();
        for round in 0..200u32 {
            let _ = round_trip(proxy.address(), format!("m{round}").as_bytes()).await;
        }
        let injected = proxy.injected();
        for fault in Fault::ALL {
            assert!(
                injected.get(&fault).copied().unwrap_or(0) > 0,
                "{fault} never injected: {}",
                proxy.report()
            );
        }
    }
}
