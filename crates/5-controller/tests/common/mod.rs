//! Test doubles speaking the real protocols: a fake OpenFlow 1.3 switch, fake nodes on the
//! JSON-lines control channel, and a controller running on its own thread.

#![allow(dead_code)] // each test binary uses a different part

use flowshift_control::api::{
    ControllerToNode, GroupStatus, LineBuffer, NodeRequest, NodeStatus, NodeToController,
    ReplyBody, decode_line, encode_line,
};
use flowshift_control::status::NodeCounters;
use flowshift_controller::{ApiClient, ClusterConfig, Controller, Endpoint};
use flowshift_migration::{InstanceId, MigrationEvent, MigrationId, Role};
use flowshift_openflow::{
    Action, ErrorMsg, FeaturesReply, FlowMod, FlowModCommand, FlowStats, Framer, Hello,
    Instruction, Message, MultipartReply, MultipartReplyBody, MultipartRequestBody, PortStats,
    SetField, decode, encode, error_type,
};
use flowshift_trust::pki::{Party, ScratchPki};
use flowshift_trust::{CONTROLLER_NAME, Credentials, server_name, split};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const GROUP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const MAC1: [u8; 6] = [2, 0xf5, 0, 0, 0, 1];
pub const MAC2: [u8; 6] = [2, 0xf5, 0, 0, 0, 2];
pub const DPID: u64 = 0x00fa_0002;

/// Credentials for nodes 1, 2 and 9, the controller, the switch, the operator and the
/// monitor, shared by this test
/// binary's tests (in cargo's per-crate temp folder under target/).
pub fn pki() -> &'static ScratchPki {
    static PKI: OnceLock<ScratchPki> = OnceLock::new();
    PKI.get_or_init(|| {
        let parties = [
            Party::Node(1),
            Party::Node(2),
            Party::Node(9),
            Party::Controller,
            Party::Switch,
            Party::Operator,
            Party::Monitor,
        ];
        ScratchPki::new(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")), &parties)
            .expect("test PKI")
    })
}

/// A party's loaded credentials from [`pki`].
pub fn creds(p: Party) -> Credentials {
    Credentials::load(&pki().files(p)).expect("test credentials")
}

/// A fresh path for an API token file (the controller creates it; [`Running`] removes it).
pub fn token_path() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "fsctl-token-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// A two-node cluster: inside port 1, outside port 2, node 1 on port 3, node 2 on port 4,
/// one group 198.18.0.1 / 100.64.0.0/16 owned by node 1; the API needs a token from a fresh
/// file.
pub fn config(openflow: &str, nodes: &str, api: &str) -> ClusterConfig {
    config_with(openflow, nodes, api, "", "")
}

/// [`config`] with `top` appended to the top-level keys and `switch` to `[switch]`.
pub fn config_with(
    openflow: &str,
    nodes: &str,
    api: &str,
    top: &str,
    switch: &str,
) -> ClusterConfig {
    let token = token_path();
    let tls = pki().toml(Party::Controller);
    ClusterConfig::from_toml(&format!(
        r#"
openflow_listen = "{openflow}"
node_listen = "{nodes}"
api_listen = "{api}"
api_token_file = "{}"
tls = {tls}
{top}
[switch]
inside_port = 1
outside_port = 2
{switch}
[[nodes]]
id = 1
port = 3
mac = "02:f5:00:00:00:01"
[[nodes]]
id = 2
port = 4
mac = "02:f5:00:00:00:02"
[[groups]]
external = "198.18.0.1"
subscribers = "100.64.0.0/16"
owner = 1
"#,
        token.display()
    ))
    .expect("test configuration is valid")
}

/// A private directory for unix sockets; removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "fsctl-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn sock(&self, name: &str) -> String {
        format!("unix:{}", self.0.join(name).display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A shared timeline of what the doubles saw, to check orderings.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<(Instant, String)>>>);

impl Log {
    pub fn push(&self, what: impl Into<String>) {
        self.0.lock().unwrap().push((Instant::now(), what.into()));
    }

    pub fn entries(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// Position of the first entry starting with `prefix` at or after `from`.
    pub fn find(&self, prefix: &str, from: usize) -> Option<usize> {
        self.entries()
            .iter()
            .enumerate()
            .skip(from)
            .find(|(_, s)| s.starts_with(prefix))
            .map(|(i, _)| i)
    }

    pub fn time(&self, i: usize) -> Instant {
        self.0.lock().unwrap()[i].0
    }
}

/// Polls `f` every 20 ms until it returns `Some`, or panics after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A controller on its own thread and runtime; stopped on drop.
pub struct Running {
    /// A client with the API token (and the operator's certificate on TCP).
    pub api: ApiClient,
    /// The API token file (removed on drop).
    pub token_file: Option<PathBuf>,
    pub api_endpoint: Endpoint,
    pub openflow: Endpoint,
    pub nodes: Endpoint,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

pub fn start_controller(cfg: ClusterConfig) -> Running {
    start_controller_in(cfg, None)
}

/// [`start_controller`] with the controller's sockets bound inside the network namespace
/// `netns` (its thread enters it first): TCP endpoints are then that namespace's, unix ones
/// stay reachable from here.
pub fn start_controller_in(cfg: ClusterConfig, netns: Option<String>) -> Running {
    // Log lines go to the test's captured output (shown when a test fails).
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_max_level(tracing::Level::DEBUG)
        .try_init();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let token_file = cfg.api_token_file.clone();
    let thread = std::thread::spawn(move || {
        if let Some(ns) = netns {
            use std::os::fd::AsRawFd;
            let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("namespace exists");
            // SAFETY: setns on an open namespace file descriptor; affects this thread only.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let c = Controller::bind(cfg).await.expect("binding the controller");
            ready_tx
                .send((c.openflow_endpoint(), c.node_endpoint(), c.api_endpoint()))
                .unwrap();
            c.run(async {
                let _ = stop_rx.await;
            })
            .await
            .unwrap();
        });
    });
    let (openflow, nodes, api) = ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("controller started");
    let token = token_file
        .as_deref()
        .map(|p| flowshift_controller::Token::load(p).expect("the controller wrote its token"));
    Running {
        api: ApiClient::new(api.clone())
            .with_token(token)
            .with_operator(&creds(Party::Operator))
            .expect("operator credentials")
            .with_timeout(Duration::from_secs(5)),
        token_file,
        api_endpoint: api,
        openflow,
        nodes,
        stop: Some(stop_tx),
        thread: Some(thread),
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(p) = &self.token_file {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A blocking byte stream to one of the controller's endpoints.
pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

pub fn connect(ep: &Endpoint) -> Box<dyn Stream> {
    let timeout = Some(Duration::from_millis(20));
    match ep {
        Endpoint::Tcp(hp) => {
            let s = TcpStream::connect(hp.as_str()).expect("connect");
            s.set_read_timeout(timeout).unwrap();
            Box::new(s)
        }
        Endpoint::Unix(p) => {
            let s = UnixStream::connect(p).expect("connect");
            s.set_read_timeout(timeout).unwrap();
            Box::new(s)
        }
    }
}

/// A mutual-TLS connection to the controller's endpoint `ep` (TCP) with party `p`'s
/// credentials, checking the controller's name; 20 ms read timeouts like [`connect`].
pub fn connect_tls(ep: &Endpoint, p: Party) -> Box<dyn Stream> {
    try_connect_tls(ep, &creds(p)).expect("TLS handshake with the controller")
}

/// [`connect_tls`] with given credentials; the handshake's error if it fails.
pub fn try_connect_tls(ep: &Endpoint, creds: &Credentials) -> std::io::Result<Box<dyn Stream>> {
    let Endpoint::Tcp(hp) = ep else {
        panic!("TLS test connections go over TCP")
    };
    let tcp = TcpStream::connect(hp.as_str())?;
    let (conn, tcp) = split::connect(
        tcp,
        creds.client_config().unwrap(),
        server_name(CONTROLLER_NAME).unwrap(),
        Duration::from_secs(5),
    )?;
    tcp.set_read_timeout(Some(Duration::from_millis(20)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(Box::new(rustls::StreamOwned::new(conn, tcp)))
}

pub fn would_block(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

// ---------------------------------------------------------------------------------------
// Fake switch

/// How the fake switch misbehaves.
#[derive(Clone, Default)]
pub struct SwitchOptions {
    /// Wait this long before answering a barrier.
    pub barrier_delay: Duration,
    /// Refuse this many MODIFY_STRICT flow-mods with an OFPET_FLOW_MOD_FAILED error.
    pub fail_modifies: u32,
    /// Hang up on the first MODIFY_STRICT without applying it.
    pub hang_up_on_modify: bool,
    /// The datapath id to claim (default [`DPID`]).
    pub datapath_id: Option<u64>,
    /// Connect over TLS with this party's credentials (the controller's `openflow_tls`).
    pub tls: Option<Party>,
}

/// A fake OpenFlow 1.3 switch: handshake, echo, flow-mods applied to a table, barriers,
/// flow and port statistics.
pub struct FakeSwitch {
    pub table: Arc<Mutex<Vec<FlowMod>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeSwitch {
    pub fn connect(ep: &Endpoint, opts: SwitchOptions, log: Log) -> FakeSwitch {
        let stream = match opts.tls {
            Some(p) => connect_tls(ep, p),
            None => connect(ep),
        };
        let table = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, s) = (table.clone(), stop.clone());
        let thread = std::thread::spawn(move || run_switch(stream, opts, log, t, s));
        FakeSwitch {
            table,
            stop,
            thread: Some(thread),
        }
    }

    /// Output ports of the steering rules (priority 200), in table order.
    pub fn steering_outputs(&self) -> Vec<(u32, [u8; 6])> {
        self.table
            .lock()
            .unwrap()
            .iter()
            .filter(|f| f.priority == 200)
            .map(|f| {
                let Some(Instruction::ApplyActions(a)) = f.instructions.first() else {
                    panic!("steering rule without actions: {f:?}")
                };
                match a.as_slice() {
                    [
                        Action::SetField(SetField::EthDst(mac)),
                        Action::Output { port, .. },
                    ] => (*port, *mac),
                    other => panic!("unexpected actions {other:?}"),
                }
            })
            .collect()
    }
}

impl Drop for FakeSwitch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run_switch(
    mut s: Box<dyn Stream>,
    mut opts: SwitchOptions,
    log: Log,
    table: Arc<Mutex<Vec<FlowMod>>>,
    stop: Arc<AtomicBool>,
) {
    let send = |s: &mut Box<dyn Stream>, m: &Message, xid: u32| {
        // The controller may have closed the connection; the read side notices.
        let _ = s.write_all(&encode(m, xid).unwrap());
    };
    send(&mut s, &Message::Hello(Hello::of13()), 1);
    let mut framer = Framer::new(65535);
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let n = match s.read(&mut buf) {
            Ok(n) if n > 0 => n,
            Err(e) if would_block(&e) => continue,
            _ => {
                log.push(format!(
                    "switch {:#x} closed by controller",
                    opts.datapath_id.unwrap_or(DPID)
                ));
                break;
            }
        };
        let mut input = &buf[..n];
        while let Some(frame) = framer.next_frame(&mut input) {
            let frame = frame.expect("controller sends well-framed messages");
            let (xid, msg) = decode(&frame).expect("controller sends decodable messages");
            match msg {
                Message::FeaturesRequest => send(
                    &mut s,
                    &Message::FeaturesReply(FeaturesReply {
                        datapath_id: opts.datapath_id.unwrap_or(DPID),
                        n_buffers: 0,
                        n_tables: 1,
                        auxiliary_id: 0,
                        capabilities: 0,
                        reserved: 0,
                    }),
                    xid,
                ),
                Message::EchoRequest(d) => send(&mut s, &Message::EchoReply(d), xid),
                Message::FlowMod(fm) => {
                    log.push(format!("switch {:?}", fm.command));
                    let mut t = table.lock().unwrap();
                    let same =
                        |a: &FlowMod, b: &FlowMod| a.priority == b.priority && a.match_ == b.match_;
                    match fm.command {
                        FlowModCommand::Delete if fm.match_.is_empty() => t.clear(),
                        FlowModCommand::Add => {
                            t.retain(|x| !same(x, &fm));
                            t.push(fm);
                        }
                        FlowModCommand::ModifyStrict if opts.hang_up_on_modify => {
                            log.push("switch hangs up");
                            return;
                        }
                        FlowModCommand::ModifyStrict if opts.fail_modifies > 0 => {
                            opts.fail_modifies -= 1;
                            log.push("switch error");
                            let data = frame[..frame.len().min(64)].to_vec();
                            send(
                                &mut s,
                                &Message::Error(ErrorMsg {
                                    err_type: error_type::FLOW_MOD_FAILED,
                                    code: 0,
                                    data,
                                }),
                                xid,
                            );
                        }
                        FlowModCommand::ModifyStrict => {
                            if let Some(x) = t.iter_mut().find(|x| same(x, &fm)) {
                                x.instructions = fm.instructions;
                            }
                        }
                        FlowModCommand::DeleteStrict => t.retain(|x| !same(x, &fm)),
                        other => panic!("unexpected flow-mod command {other:?}"),
                    }
                }
                Message::BarrierRequest => {
                    std::thread::sleep(opts.barrier_delay);
                    log.push("switch barrier reply");
                    send(&mut s, &Message::BarrierReply, xid);
                }
                Message::MultipartRequest(req) => {
                    let body = match req.body {
                        MultipartRequestBody::Flow(_) => MultipartReplyBody::Flow(
                            table.lock().unwrap().iter().map(flow_stats).collect(),
                        ),
                        MultipartRequestBody::PortStats { .. } => {
                            MultipartReplyBody::PortStats(vec![PortStats {
                                port_no: 1,
                                rx_packets: 10,
                                tx_packets: 20,
                                ..PortStats::default()
                            }])
                        }
                        _ => continue,
                    };
                    send(
                        &mut s,
                        &Message::MultipartReply(MultipartReply { flags: 0, body }),
                        xid,
                    );
                }
                _ => {}
            }
        }
    }
}

fn flow_stats(f: &FlowMod) -> FlowStats {
    FlowStats {
        table_id: 0,
        duration_sec: 1,
        duration_nsec: 0,
        priority: f.priority,
        idle_timeout: 0,
        hard_timeout: 0,
        flags: 0,
        cookie: f.cookie,
        packet_count: 7,
        byte_count: 700,
        match_: f.match_.clone(),
        instructions: f.instructions.clone(),
    }
}

// ---------------------------------------------------------------------------------------
// Fake node

/// How a fake node behaves.
#[derive(Default)]
pub struct NodeOptions {
    /// Refuse `StartMigration`.
    pub fail_start: bool,
    /// Called when `CutoverDone` arrives, before it is answered.
    pub on_cutover: Option<Box<dyn Fn() + Send>>,
    /// Connect with this node's certificate instead of its own (an impostor).
    pub cert_of: Option<u16>,
    /// Packets per second its status reports (`rx_packets` grows at this rate); default: a
    /// constant `rx_packets` of 100.
    pub pps: Option<Arc<AtomicU64>>,
    /// Groups its status reports (7 sessions each); default: [`GROUP`].
    pub groups: Vec<Ipv4Addr>,
}

/// A fake node: says hello, answers Status / StartMigration / CutoverDone / Report / Abort
/// and pushes ReadyForCutover and Completed as a source would.
pub struct FakeNode {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeNode {
    /// Connects to the controller `c` over mutual TLS with node `id`'s certificate (or
    /// `opts.cert_of`'s) and serves it on a thread.
    pub fn spawn(c: &Running, id: u16, mac: [u8; 6], opts: NodeOptions, log: Log) -> FakeNode {
        let stream = connect_tls(&c.nodes, Party::Node(opts.cert_of.unwrap_or(id)));
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || run_node(stream, id, mac, opts, log, s));
        FakeNode {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run_node(
    mut s: Box<dyn Stream>,
    id: u16,
    mac: [u8; 6],
    opts: NodeOptions,
    log: Log,
    stop: Arc<AtomicBool>,
) {
    let t0 = Instant::now();
    let send = |s: &mut Box<dyn Stream>, m: &NodeToController| {
        let _ = s.write_all(&encode_line(m));
    };
    let event = |event| NodeToController::Event {
        at_ns: t0.elapsed().as_nanos() as u64,
        event,
    };
    send(
        &mut s,
        &NodeToController::Hello {
            id: InstanceId(id),
            mac,
            groups: if id == 1 { vec![GROUP] } else { vec![] },
        },
    );
    let mut lines = LineBuffer::default();
    let mut buf = vec![0u8; 65536];
    let mut started = 0;
    let mut rx = 100.0;
    let mut rx_at = t0;
    let reported = if opts.groups.is_empty() {
        vec![GROUP]
    } else {
        opts.groups.clone()
    };
    while !stop.load(Ordering::Relaxed) {
        match s.read(&mut buf) {
            Ok(0) => {
                log.push(format!("node {id} closed by controller"));
                return;
            }
            Ok(n) => lines.push(&buf[..n]),
            Err(e) if would_block(&e) => continue,
            Err(_) => {
                log.push(format!("node {id} closed by controller"));
                return;
            }
        }
        while let Some(line) = lines.next_line().unwrap() {
            let ControllerToNode::Request { req, body } = decode_line(&line).unwrap();
            let reply = |result| NodeToController::Reply { req, result };
            match body {
                NodeRequest::Status => {
                    let now = Instant::now();
                    if let Some(pps) = &opts.pps {
                        let dt = now.duration_since(rx_at).as_secs_f64();
                        rx += pps.load(Ordering::Relaxed) as f64 * dt;
                    }
                    rx_at = now;
                    let groups = reported
                        .iter()
                        .map(|&external| GroupStatus {
                            external,
                            mode: flowshift_nat::GroupMode::Active,
                            mappings: 5,
                            sessions: 7,
                        })
                        .collect();
                    send(
                        &mut s,
                        &reply(Ok(ReplyBody::Status(Box::new(NodeStatus {
                            id: InstanceId(id),
                            uptime_s: now.duration_since(t0).as_secs_f64(),
                            groups,
                            migrations: vec![],
                            counters: {
                                let mut c = NodeCounters::default();
                                c.io.rx_packets = rx as u64;
                                c.nat.drop(flowshift_nat::DropReason::NoMapping);
                                c
                            },
                        })))),
                    )
                }
                NodeRequest::AdoptGroup { external, .. } => {
                    log.push(format!("node {id} adopt {external}"));
                    send(&mut s, &reply(Ok(ReplyBody::Ok)));
                }
                NodeRequest::ReleaseGroup { external } => {
                    log.push(format!("node {id} release {external}"));
                    send(&mut s, &reply(Ok(ReplyBody::Released { sessions: 0 })));
                }
                NodeRequest::StartMigration { .. } if opts.fail_start => {
                    log.push(format!("node {id} refuses start"));
                    send(&mut s, &reply(Err("refused by the test".into())));
                }
                NodeRequest::StartMigration { .. } => {
                    started += 1;
                    let migration = MigrationId::new(InstanceId(id), started);
                    log.push(format!("node {id} start"));
                    send(
                        &mut s,
                        &reply(Ok(ReplyBody::Started {
                            migration: migration.0,
                        })),
                    );
                    send(
                        &mut s,
                        &event(MigrationEvent::ReadyForCutover {
                            migration,
                            group: 0,
                        }),
                    );
                }
                NodeRequest::CutoverDone { migration } => {
                    log.push(format!("node {id} cutover done"));
                    if let Some(f) = &opts.on_cutover {
                        f();
                    }
                    send(&mut s, &reply(Ok(ReplyBody::Ok)));
                    send(
                        &mut s,
                        &event(MigrationEvent::Completed {
                            migration: MigrationId(migration),
                            role: Role::Source,
                        }),
                    );
                }
                NodeRequest::Report { migration } => send(
                    &mut s,
                    &reply(Ok(ReplyBody::Report(serde_json::json!({
                        "migration": migration,
                        "phases": [{"name": "freeze_copy", "start_ms": 1.0, "end_ms": 3.5}],
                        "packets_lost_by_cause": {},
                        "max_freeze_ms": 1.5,
                    })))),
                ),
                NodeRequest::Abort { migration } => {
                    log.push(format!("node {id} abort {migration}"));
                    send(&mut s, &reply(Ok(ReplyBody::Aborted { reverted: true })));
                }
            }
        }
    }
}
