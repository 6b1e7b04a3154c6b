//! iperf3 (and ping) inside the testbed's namespaces: servers in the server namespace (one
//! process per port, `-1`, wrapped in `timeout` since `iperf3 -s -1` waits forever without a
//! client), clients in the subscriber namespace, JSON output (`-J`) with 100 ms intervals,
//! parsed into [`IperfRun`].

use super::sys;
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Reporting interval of every iperf3 process, in seconds.
pub const INTERVAL_S: f64 = 0.1;
/// First server port.
pub const BASE_PORT: u16 = 5201;
/// iperf3's limit on parallel streams per client.
pub const MAX_STREAMS: usize = 128;

/// A process writing JSON to a file.
pub struct JsonProcess {
    /// The process (`ip netns exec ... timeout ... iperf3 ...`).
    pub child: Child,
    /// Its standard output.
    pub out: PathBuf,
    /// Its standard error.
    pub err: PathBuf,
    /// What it is, for messages.
    pub what: String,
}

impl JsonProcess {
    fn spawn(
        ns: &str,
        limit: Duration,
        args: &[String],
        out: PathBuf,
        what: String,
    ) -> Result<Self> {
        let err = out.with_extension("stderr");
        let stdout =
            fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?;
        let stderr =
            fs::File::create(&err).with_context(|| format!("creating {}", err.display()))?;
        let mut cmd = sys::ns_cmd(ns, sys::prog("timeout")?)?;
        cmd.args(["--kill-after=2", &format!("{}", limit.as_secs().max(1))])
            .arg(sys::prog("iperf3")?)
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let child = cmd.spawn().with_context(|| format!("starting {what}"))?;
        Ok(JsonProcess {
            child,
            out,
            err,
            what,
        })
    }

    /// Waits until the process exits or `deadline` passes (then kills it).
    pub fn wait(&mut self, deadline: Instant) -> Result<ExitStatus> {
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() >= deadline || sys::interrupted() {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("{} did not finish in time", self.what);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The parsed JSON output.
    pub fn result(&self) -> Result<IperfRun> {
        let text = fs::read_to_string(&self.out)
            .with_context(|| format!("reading {}", self.out.display()))?;
        if text.trim().is_empty() {
            bail!(
                "{} wrote no JSON; stderr: {}",
                self.what,
                sys::tail(&self.err, 5)
            );
        }
        IperfRun::parse(&text).with_context(|| format!("{} ({})", self.what, self.out.display()))
    }
}

impl Drop for JsonProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts one server per port in `ns`, bound to `bind`, each exiting after one test or after
/// `limit`; waits until all listen.
pub fn start_servers(
    ns: &str,
    bind: Ipv4Addr,
    ports: &[u16],
    limit: Duration,
    dir: &Path,
) -> Result<Vec<JsonProcess>> {
    let mut v = Vec::new();
    for &port in ports {
        let args: Vec<String> = [
            "-s",
            "-1",
            "-J",
            "-i",
            &INTERVAL_S.to_string(),
            "-p",
            &port.to_string(),
            "-B",
            &bind.to_string(),
        ]
        .map(String::from)
        .to_vec();
        v.push(JsonProcess::spawn(
            ns,
            limit,
            &args,
            dir.join(format!("iperf-server-{port}.json")),
            format!("iperf3 server on port {port}"),
        )?);
    }
    wait_listening(ns, ports, Duration::from_secs(10))?;
    Ok(v)
}

/// Waits until TCP listeners on all `ports` exist in `ns` (`ss -ltn`).
pub fn wait_listening(ns: &str, ports: &[u16], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let out = sys::in_ns(ns, "ss", &["-Hltn"])?;
        let listening = |p: u16| {
            let suffix = format!(":{p}");
            out.lines()
                .filter_map(|l| l.split_whitespace().nth(3))
                .any(|local| local.ends_with(&suffix))
        };
        if ports.iter().all(|&p| listening(p)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("iperf3 servers in {ns} not listening after {timeout:?}");
        }
        sys::sleep(Duration::from_millis(20))?;
    }
}

/// Starts a client in `ns`: `streams` parallel TCP flows from `bind` to `server:port` for
/// `seconds`.
pub fn start_client(
    ns: &str,
    server: Ipv4Addr,
    port: u16,
    bind: Ipv4Addr,
    streams: usize,
    seconds: f64,
    dir: &Path,
) -> Result<JsonProcess> {
    if streams == 0 || streams > MAX_STREAMS {
        bail!("iperf3 client: 1..={MAX_STREAMS} streams, not {streams}");
    }
    let args: Vec<String> = [
        "-c",
        &server.to_string(),
        "-p",
        &port.to_string(),
        "-B",
        &bind.to_string(),
        "-P",
        &streams.to_string(),
        "-t",
        &format!("{seconds}"),
        "-i",
        &INTERVAL_S.to_string(),
        "-J",
        "--connect-timeout",
        "5000",
    ]
    .map(String::from)
    .to_vec();
    let limit = Duration::from_secs_f64(seconds + 20.0);
    JsonProcess::spawn(
        ns,
        limit,
        &args,
        dir.join(format!("iperf-client-{port}.json")),
        format!("iperf3 client {bind} -> {server}:{port}"),
    )
}

/// One 100 ms interval (summed over streams).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    /// Start, seconds since the test started.
    pub start: f64,
    /// End.
    pub end: f64,
    /// Bytes in the interval.
    pub bytes: u64,
    /// Retransmissions (sender side only).
    pub retransmits: Option<u64>,
}

/// One iperf3 run (client or server side) as its JSON reports it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IperfRun {
    /// iperf3's error message, if the test failed (a connection broke, refused, ...).
    pub error: Option<String>,
    /// Streams in the end summary.
    pub streams: usize,
    /// Streams that carried data (sender or receiver bytes > 0).
    pub streams_with_data: usize,
    /// Intervals (summed over streams).
    pub intervals: Vec<Interval>,
    /// Bytes sent (end summary).
    pub bytes_sent: u64,
    /// Bytes received (end summary).
    pub bytes_received: u64,
    /// Retransmissions (client side).
    pub retransmits: u64,
    /// Receiver throughput, bits per second (end summary).
    pub received_bps: f64,
    /// Sender throughput, bits per second.
    pub sent_bps: f64,
    /// Test duration as reported, seconds.
    pub seconds: f64,
}

fn num(v: &Value, k: &str) -> f64 {
    v.get(k).and_then(Value::as_f64).unwrap_or(0.0)
}

fn count(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

impl IperfRun {
    /// Parses iperf3's `-J` output.
    pub fn parse(text: &str) -> Result<IperfRun> {
        let v: Value = serde_json::from_str(text).context("iperf3 JSON")?;
        let mut r = IperfRun {
            error: v.get("error").and_then(Value::as_str).map(str::to_owned),
            ..IperfRun::default()
        };
        for iv in v
            .get("intervals")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let sum = match iv.get("sum") {
                Some(s) => s.clone(),
                None => {
                    // Older versions omit the sum with one stream: add the streams up.
                    let streams = iv.get("streams").and_then(Value::as_array);
                    let first = streams.and_then(|s| s.first()).cloned().unwrap_or_default();
                    let bytes: u64 = streams
                        .into_iter()
                        .flatten()
                        .map(|s| count(s, "bytes"))
                        .sum();
                    serde_json::json!({"start": num(&first, "start"), "end": num(&first, "end"), "bytes": bytes})
                }
            };
            r.intervals.push(Interval {
                start: num(&sum, "start"),
                end: num(&sum, "end"),
                bytes: count(&sum, "bytes"),
                retransmits: sum.get("retransmits").and_then(Value::as_u64),
            });
        }
        if let Some(end) = v.get("end") {
            let streams = end.get("streams").and_then(Value::as_array);
            r.streams = streams.map_or(0, Vec::len);
            r.streams_with_data = streams
                .into_iter()
                .flatten()
                .filter(|s| {
                    s.get("sender").is_some_and(|x| count(x, "bytes") > 0)
                        || s.get("receiver").is_some_and(|x| count(x, "bytes") > 0)
                })
                .count();
            if let Some(s) = end.get("sum_sent") {
                r.bytes_sent = count(s, "bytes");
                r.retransmits = count(s, "retransmits");
                r.sent_bps = num(s, "bits_per_second");
                r.seconds = num(s, "seconds");
            }
            if let Some(s) = end.get("sum_received") {
                r.bytes_received = count(s, "bytes");
                r.received_bps = num(s, "bits_per_second");
                if r.seconds == 0.0 {
                    r.seconds = num(s, "seconds");
                }
            }
        }
        Ok(r)
    }

    /// Whether the test ran to its end with every stream carrying data and no error.
    pub fn ok(&self, streams: usize) -> Result<(), String> {
        if let Some(e) = &self.error {
            return Err(format!("iperf3 error: {e}"));
        }
        if self.streams != streams {
            return Err(format!("{} of {streams} streams reported", self.streams));
        }
        if self.streams_with_data != streams {
            return Err(format!(
                "{} of {streams} streams carried data",
                self.streams_with_data
            ));
        }
        Ok(())
    }
}

/// Sums the intervals of several runs into bins of [`INTERVAL_S`]: (bin start in s relative
/// to the runs' start, Mbit/s).
pub fn goodput_bins(runs: &[&IperfRun]) -> Vec<(f64, f64)> {
    let mut bins: Vec<u64> = Vec::new();
    for r in runs {
        for iv in &r.intervals {
            let i = (iv.start / INTERVAL_S).round() as usize;
            if i >= bins.len() {
                bins.resize(i + 1, 0);
            }
            bins[i] += iv.bytes;
        }
    }
    bins.iter()
        .enumerate()
        .map(|(i, &b)| (i as f64 * INTERVAL_S, b as f64 * 8.0 / INTERVAL_S / 1e6))
        .collect()
}

/// A `ping` at a high rate from `ns` to `dst` (source `src`), with wall-clock timestamps.
pub struct Ping {
    child: Child,
    out: PathBuf,
}

/// What the ping measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PingResult {
    /// (send time as Unix seconds, round-trip time in ms) of every answered probe.
    pub samples: Vec<(f64, f64)>,
    /// Probes sent.
    pub sent: u64,
    /// Probes answered.
    pub received: u64,
}

impl Ping {
    /// Starts `ping -D -n -i interval -w seconds` (root allows intervals below 0.2 s).
    pub fn start(
        ns: &str,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        interval: Duration,
        seconds: u64,
        out: PathBuf,
    ) -> Result<Ping> {
        let f = fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?;
        let mut cmd = sys::ns_cmd(ns, sys::prog("ping")?)?;
        cmd.args([
            "-D",
            "-n",
            "-i",
            &format!("{:.3}", interval.as_secs_f64()),
            "-W",
            "1",
            "-w",
            &seconds.to_string(),
            "-I",
            &src.to_string(),
            &dst.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(f)
        .stderr(Stdio::null());
        let child = cmd.spawn().context("starting ping")?;
        Ok(Ping { child, out })
    }

    /// Waits for the end (killing it at `deadline`) and parses the output.
    pub fn finish(mut self, deadline: Instant) -> Result<PingResult> {
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            // SIGINT makes ping print its summary.
            if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
                // SAFETY: plain syscall on our own child.
                unsafe {
                    libc::kill(pid, libc::SIGINT);
                }
            }
            std::thread::sleep(Duration::from_millis(200));
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let text = fs::read_to_string(&self.out)
            .with_context(|| format!("reading {}", self.out.display()))?;
        Ok(parse_ping(&text))
    }
}

/// Parses `ping -D` output.
pub fn parse_ping(text: &str) -> PingResult {
    let mut r = PingResult::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix('[')
            && let Some((ts, body)) = rest.split_once(']')
            && let Some(t) = body.split("time=").nth(1)
        {
            let ms = t.trim_end_matches(" ms").trim().parse::<f64>();
            if let (Ok(ts), Ok(ms)) = (ts.parse::<f64>(), ms) {
                r.samples.push((ts - ms / 1e3, ms));
            }
        } else if line.contains("packets transmitted") {
            let nums: Vec<u64> = line
                .split(',')
                .filter_map(|p| p.split_whitespace().next()?.parse().ok())
                .collect();
            if let [sent, received, ..] = nums[..] {
                r.sent = sent;
                r.received = received;
            }
        }
    }
    if r.received == 0 {
        r.received = r.samples.len() as u64;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: &str = r#"{
      "start": {"connected": []},
      "intervals": [
        {"streams": [], "sum": {"start": 0, "end": 0.1, "seconds": 0.1, "bytes": 1250000, "bits_per_second": 1e8, "retransmits": 2}},
        {"streams": [], "sum": {"start": 0.1, "end": 0.2, "seconds": 0.1, "bytes": 2500000, "bits_per_second": 2e8, "retransmits": 0}}
      ],
      "end": {
        "streams": [
          {"sender": {"bytes": 100}, "receiver": {"bytes": 90}},
          {"sender": {"bytes": 0}, "receiver": {"bytes": 0}}
        ],
        "sum_sent": {"seconds": 0.2, "bytes": 3750000, "bits_per_second": 1.5e8, "retransmits": 2},
        "sum_received": {"seconds": 0.2, "bytes": 3700000, "bits_per_second": 1.48e8}
      }
    }"#;

    #[test]
    fn client_json_parses() {
        let r = IperfRun::parse(CLIENT).unwrap();
        assert_eq!(r.intervals.len(), 2);
        assert_eq!(r.intervals[1].bytes, 2_500_000);
        assert_eq!(r.intervals[0].retransmits, Some(2));
        assert_eq!(r.streams, 2);
        assert_eq!(r.streams_with_data, 1);
        assert_eq!(r.bytes_sent, 3_750_000);
        assert_eq!(r.retransmits, 2);
        assert!(r.ok(2).unwrap_err().contains("1 of 2 streams carried data"));
        let bins = goodput_bins(&[&r, &r]);
        assert_eq!(bins.len(), 2);
        assert!((bins[0].1 - 200.0).abs() < 1e-9, "{bins:?}");
    }

    #[test]
    fn errors_are_reported() {
        let r = IperfRun::parse(r#"{"start": {}, "intervals": [], "end": {}, "error": "control socket has closed unexpectedly"}"#).unwrap();
        assert!(r.ok(1).unwrap_err().contains("closed unexpectedly"));
        assert!(IperfRun::parse("not json").is_err());
    }

    #[test]
    fn ping_output_parses() {
        let text = "PING 203.0.113.10 (203.0.113.10) from 100.64.0.8 : 56(84) bytes of data.\n\
            [1700000000.500000] 64 bytes from 203.0.113.10: icmp_seq=1 ttl=64 time=0.250 ms\n\
            [1700000000.510000] 64 bytes from 203.0.113.10: icmp_seq=2 ttl=64 time=1.50 ms\n\
            \n--- 203.0.113.10 ping statistics ---\n\
            3 packets transmitted, 2 received, 33.3333% packet loss, time 20ms\n";
        let r = parse_ping(text);
        assert_eq!((r.sent, r.received), (3, 2));
        assert_eq!(r.samples.len(), 2);
        assert!((r.samples[1].1 - 1.5).abs() < 1e-9);
        assert!((r.samples[0].0 - 1_700_000_000.499_75).abs() < 1e-6);
    }
}
