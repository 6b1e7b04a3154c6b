//! The control channel's lines carry floats exactly (regression, fuzz target `control`: with
//! serde_json's default float parser a third of all f64 values came back one ulp off, e.g.
//! a migration's `idle_rate_threshold` or a node's `uptime_s`).

use flowshift_control::api::{
    ControllerToNode, NodeRequest, NodeStatus, NodeToController, ReplyBody, decode_line,
    encode_line,
};
use flowshift_migration::InstanceId;
use flowshift_migration::{Algorithm, Params};
use std::net::Ipv4Addr;

fn line_roundtrip<T>(msg: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let line = encode_line(msg);
    decode_line(&line[..line.len() - 1]).expect("an encoded line decodes")
}

#[test]
fn floats_cross_the_control_channel_unchanged() {
    // The fuzzer's case, then a spread of bit patterns (xorshift).
    let mut floats = vec![1.0715660391465826e-75, 0.1 + 0.2, f64::MIN_POSITIVE, 5e-324];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while floats.len() < 2000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let f = f64::from_bits(x);
        if f.is_finite() {
            floats.push(f);
        }
    }
    for f in floats {
        let req = ControllerToNode::Request {
            req: 1,
            body: NodeRequest::StartMigration {
                external: Ipv4Addr::new(198, 18, 0, 1),
                to: InstanceId(2),
                algorithm: Algorithm::FreezeCopy,
                params: Some(Params {
                    idle_rate_threshold: f,
                    ..Params::default()
                }),
            },
        };
        assert_eq!(line_roundtrip(&req), req, "{f:e}");
        let status = NodeToController::Reply {
            req: 2,
            result: Ok(ReplyBody::Status(Box::new(NodeStatus {
                uptime_s: f,
                ..NodeStatus::default()
            }))),
        };
        assert_eq!(line_roundtrip(&status), status, "{f:e}");
    }
}
