//! The running node: threads, the packet loop, shutdown.
//!
//! **Packet loop** (one thread, optionally pinned to `cpu`). Each iteration reads the clock
//! and:
//! 1. *ring stage*: walks up to [`RX_BLOCKS_PER_ITERATION`] retired ring blocks into the
//!    engine (batches of `batch` packets per ingress) and hands over the last partial batch;
//! 2. *side work*: at most `side_budget` queued controller commands and received transfer
//!    frames ([`Engine::poll_side`]), due timers, and every [`PUBLISH_INTERVAL`] the ring's
//!    drop counters and the status publication;
//! 3. *pacing* ([`crate::pacing::Pacer`]): with `poll = "adaptive"` (default), once
//!    `spin_us` have passed without work it blocks in poll(2) on the socket and on a
//!    [`Waker`] that the transfer readers and the control client signal whenever they queue
//!    something, until the next timer or publication (at most [`MAX_SLEEP`]). The kernel
//!    retires a ring block at most [`crate::afpacket::RETIRE_MS`] ms after its first frame,
//!    which wakes the loop: an idle node costs ~0 CPU, a busy one never sleeps, and a lone
//!    packet waits about 1 ms in the ring (as it does when spinning: only retired blocks are
//!    visible). `poll = "busy"` never blocks.
//!
//! The time from the end of one ring stage to the start of the next, minus time blocked, is
//! the poll gap (`max_poll_gap_us`, `poll_gaps_over_<b>us`; see [`crate::pacing::GapMeter`]).
//! The packet thread's and the process's CPU time are published with the status
//! (`cpu_packet_thread_us`, `cpu_process_us`).

use crate::afpacket::{AfPacket, SocketConfig};
use crate::config::NodeConfig;
use crate::control::{self, Identity};
use crate::engine::{Engine, Links};
use crate::pacing::{MAX_SLEEP, Pacer, PollMode, Step};
use crate::stats::{ControlCounters, SnapshotCell, TransferCounters};
use crate::sys::Waker;
use crate::transfer::{self, TransferService};
use anyhow::{Context, Result, anyhow};
use flowshift_control::api::NodeStatus;
use flowshift_http::Token;
use flowshift_wire::Instant;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use tracing::{info, warn};

/// Ring blocks walked per loop iteration before the other sources get a turn.
pub const RX_BLOCKS_PER_ITERATION: usize = 8;
/// Most loop iterations in a row whose timers wait for a backlogged ring to drain (see
/// `packet_loop`), so a ring that never drains still cannot starve them.
pub const MAX_TIMER_DEFERRALS: u32 = 64;
/// How often the status snapshot and the ring counters are refreshed.
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(100);
/// Frames per peer waiting for the transfer writer, and received frames waiting for the
/// packet thread.
pub const TRANSFER_QUEUE: usize = 1024;
/// Controller commands waiting for the packet thread.
pub const COMMAND_QUEUE: usize = 64;
/// Events and replies waiting for the control client.
pub const EVENT_QUEUE: usize = 4096;

/// A started node. [`Node::shutdown`] stops it.
pub struct Node {
    stop: Arc<AtomicBool>,
    packet: JoinHandle<NodeStatus>,
    transfer: TransferService,
    control: JoinHandle<()>,
    metrics: Option<crate::metrics::MetricsServer>,
    snapshot: Arc<SnapshotCell>,
}

impl Node {
    /// Opens the interface and starts the node.
    pub fn start(cfg: NodeConfig) -> Result<Node> {
        let sock = AfPacket::open(&SocketConfig::from_node(&cfg))
            .with_context(|| format!("opening AF_PACKET on {}", cfg.interface))?;
        Node::start_with_socket(cfg, sock)
    }

    /// Starts the node on a socket opened by the caller (for example inside another network
    /// namespace).
    pub fn start_with_socket(cfg: NodeConfig, sock: AfPacket) -> Result<Node> {
        let inst = cfg.build_instance()?;
        let creds = flowshift_trust::Credentials::load(&cfg.tls).context("loading [tls]")?;
        if !creds.is(&flowshift_trust::node_name(cfg.id.0)) {
            anyhow::bail!(
                "[tls] cert {} is not node {}'s (it must name {})",
                cfg.tls.cert.display(),
                cfg.id,
                flowshift_trust::node_name(cfg.id.0)
            );
        }
        let ifindex = sock.ifindex();
        let transfer_listener = TcpListener::bind(cfg.transfer_listen)
            .with_context(|| format!("transfer_listen {}", cfg.transfer_listen))?;
        let metrics_listener = cfg
            .metrics_listen
            .map(|a| TcpListener::bind(a).with_context(|| format!("metrics_listen {a}")))
            .transpose()?;
        let stop = Arc::new(AtomicBool::new(false));
        let snapshot = Arc::new(SnapshotCell::default());
        let transfer_counters = Arc::new(TransferCounters::default());
        let control_counters = Arc::new(ControlCounters::default());
        let peers: Vec<_> = cfg.peers.iter().map(|p| (p.id, p.transfer)).collect();
        let ids: Vec<_> = peers.iter().map(|&(id, _)| id).collect();
        let waker = Arc::new(Waker::new()?);
        let (tlink, tends) = transfer::link(&ids, TRANSFER_QUEUE, waker.clone());
        let (clink, cends) = control::link(COMMAND_QUEUE, EVENT_QUEUE, waker.clone());
        let engine = Engine::new(
            &cfg,
            inst,
            Links {
                transfer: tlink,
                control: clink,
                snapshot: snapshot.clone(),
                transfer_counters: transfer_counters.clone(),
                control_counters: control_counters.clone(),
            },
        );
        let transfer = transfer::start(
            transfer_listener,
            cfg.id,
            &creds,
            &peers,
            tends,
            transfer_counters,
            stop.clone(),
        )?;
        let control = control::start(
            cfg.controller,
            Identity {
                id: cfg.id,
                mac: cfg.mac,
            },
            creds.client_config().context("[tls]")?,
            snapshot.clone(),
            cends,
            control_counters,
            stop.clone(),
        )?;
        let metrics_token = cfg
            .metrics_token_file
            .as_deref()
            .map(|p| {
                let (token, created) = Token::load_or_create(p).context("metrics_token_file")?;
                if created {
                    info!(path = %p.display(), "created the /metrics token file");
                }
                anyhow::Ok(token)
            })
            .transpose()?;
        let metrics = match metrics_listener {
            Some(l) => {
                let tls = crate::metrics::server_tls(&creds).context("[tls] for /metrics")?;
                Some(crate::metrics::start(
                    l,
                    snapshot.clone(),
                    tls,
                    metrics_token,
                )?)
            }
            None => None,
        };
        let loop_cfg = LoopConfig {
            poll: cfg.poll,
            spin: Duration::from_micros(u64::from(cfg.spin_us)),
            cpu: cfg.cpu,
            waker,
        };
        let stop2 = stop.clone();
        let packet = std::thread::Builder::new()
            .name("fs-packet".into())
            .spawn(move || packet_loop(engine, sock, loop_cfg, &stop2))?;
        info!(
            id = %cfg.id,
            interface = %cfg.interface,
            ifindex,
            mac = %cfg.mac,
            vnet_hdr = cfg.vnet_hdr,
            groups = cfg.nat.groups.len(),
            peers = cfg.peers.len(),
            transfer = %cfg.transfer_listen,
            controller = %cfg.controller,
            "node started"
        );
        Ok(Node {
            stop,
            packet,
            transfer,
            control,
            metrics,
            snapshot,
        })
    }

    /// False once the packet thread has ended (it only ends on shutdown or a panic).
    pub fn is_running(&self) -> bool {
        !self.packet.is_finished()
    }

    /// The latest published status (at most [`PUBLISH_INTERVAL`] old).
    pub fn status(&self) -> Arc<NodeStatus> {
        self.snapshot.get()
    }

    /// Stops every thread and returns the final status.
    pub fn shutdown(self) -> Result<NodeStatus> {
        self.stop.store(true, Ordering::SeqCst);
        let status = self
            .packet
            .join()
            .map_err(|_| anyhow!("the packet thread panicked"));
        self.transfer.join();
        let _ = self.control.join();
        if let Some(m) = self.metrics {
            m.stop();
        }
        status
    }
}

struct LoopConfig {
    poll: PollMode,
    spin: Duration,
    cpu: Option<usize>,
    waker: Arc<Waker>,
}

fn packet_loop(
    mut engine: Engine,
    mut sock: AfPacket,
    cfg: LoopConfig,
    stop: &AtomicBool,
) -> NodeStatus {
    if let Some(cpu) = cfg.cpu {
        match crate::sys::pin_to_cpu(cpu) {
            Ok(()) => info!(cpu, "packet thread pinned"),
            Err(e) => warn!(error = %e, "packet thread not pinned"),
        }
    }
    let started = std::time::Instant::now();
    let clock =
        || Instant::from_nanos(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
    let (rx, tx) = sock.split();
    let mut pacer = Pacer::new(cfg.poll, cfg.spin, MAX_SLEEP);
    let mut next_publish = Instant::ZERO;
    let mut deferred = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let now = clock();
        engine.stamp_clock(now, realtime_ns());
        engine.ring_start(now);
        let mut work = rx.poll(RX_BLOCKS_PER_ITERATION, |f| engine.rx_frame(now, f, tx));
        engine.flush_rx(now, tx);
        engine.ring_done(clock());
        work += engine.poll_side(now, tx);
        // Timers run once the ring is drained: a frame still in it arrived before `now`, and
        // a timer such as the end-of-chain marker ("nothing chained for `chain_quiet`") must
        // not overtake it. Bounded by MAX_TIMER_DEFERRALS iterations in a row.
        if rx.has_retired_block() && deferred < MAX_TIMER_DEFERRALS {
            deferred += 1;
            engine.note_timer_deferred();
        } else {
            deferred = 0;
            engine.handle_timeout(now, tx);
        }
        if now >= next_publish {
            match rx.stats() {
                Ok(s) => engine.note_ring(s.drops, s.freezes),
                Err(e) => warn!(error = %e, "ring statistics unavailable"),
            }
            engine.publish(now);
            next_publish = now + PUBLISH_INTERVAL;
        }
        let deadline = engine.next_timeout().min(next_publish);
        if let Step::Sleep(d) = pacer.step(now, work, deadline) {
            let from = clock();
            rx.wait(d, Some(&cfg.waker));
            cfg.waker.clear();
            engine.note_sleep(from, clock());
        }
    }
    let now = clock();
    engine.flush_rx(now, tx);
    if let Ok(s) = rx.stats() {
        engine.note_ring(s.drops, s.freezes);
    }
    let status = engine.status(now);
    engine.publish(now);
    status
}

/// Runs a node until SIGINT or SIGTERM (or until its packet thread dies), then logs the final
/// counters. Installs the signal handlers (`signal-hook`: they only set a flag).
pub fn run(cfg: NodeConfig) -> Result<NodeStatus> {
    let signalled = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, signalled.clone())
            .context("installing the signal handlers")?;
    }
    let node = Node::start(cfg)?;
    while !signalled.load(Ordering::SeqCst) && node.is_running() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let died = !node.is_running();
    let status = node.shutdown()?;
    let counters: Vec<String> = status
        .counters
        .flat()
        .into_iter()
        .filter(|(_, v)| *v != 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    info!(
        uptime_s = status.uptime_s,
        counters = %counters.join(" "),
        "node stopped; final non-zero counters"
    );
    if died {
        return Err(anyhow!("the packet thread stopped unexpectedly"));
    }
    Ok(status)
}

/// The realtime clock (what the kernel stamps ring frames with), ns since the epoch; 0 if
/// unavailable (frames are then handed over at the loop's time).
fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0))
}
