//! [`MacAddr`]: an Ethernet address, the one MAC type of the workspace (node and controller
//! configurations, frames, switch rules' text form).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// An Ethernet MAC address, written `02:f5:00:00:00:01` in configurations and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// True for group (multicast or broadcast) addresses, which no node may use.
    pub fn is_multicast(self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl FromStr for MacAddr {
    type Err = String;

    /// Parses six colon-separated pairs of hex digits; anything else is an error naming the
    /// input.
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(format!(
                "MAC address {s:?}: expected six hex bytes like 02:f5:00:00:00:01"
            ));
        }
        let mut mac = [0u8; 6];
        for (b, p) in mac.iter_mut().zip(&parts) {
            let hex = p.len() == 2 && p.bytes().all(|c| c.is_ascii_hexdigit());
            if !hex {
                return Err(format!("MAC address {s:?}: {p:?} is not two hex digits"));
            }
            *b = u8::from_str_radix(p, 16)
                .map_err(|_| format!("MAC address {s:?}: {p:?} is not two hex digits"))?;
        }
        Ok(MacAddr(mac))
    }
}

impl TryFrom<String> for MacAddr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> String {
        m.to_string()
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::MacAddr;

    #[test]
    fn parses_prints_and_refuses() {
        let m: MacAddr = "02:f5:00:00:00:0a".parse().unwrap();
        assert_eq!(m, MacAddr([2, 0xf5, 0, 0, 0, 10]));
        assert_eq!(m.to_string(), "02:f5:00:00:00:0a");
        assert!(!m.is_multicast());
        assert!(MacAddr([0xff; 6]).is_multicast());
        for bad in [
            "",
            "02:f5:00:00:00",
            "02:f5:00:00:00:00:01",
            "2:f5:00:00:00:01",
            "+2:f5:00:00:00:01",
            "zz:f5:00:00:00:01",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?} accepted");
        }
    }
}
