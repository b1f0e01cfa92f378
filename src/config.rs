//! Node configuration: defaults, timing profiles, the TOML file, `SHOAL_*`
//! environment variables and flags, with validation that names the key.
//!
//! Precedence is flag > environment > file > default. The CLI turns flags
//! and environment variables into one [`ConfigLayer`] (clap reads both), the
//! file is another, and [`ConfigLayer::build`] lays the first over the
//! second, fills in defaults and validates.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Default p2p listen addresses: TCP (private by the cluster secret through
/// libp2p-pnet) and QUIC on the same port number (private by Shoal's
/// admission handshake, see [`crate::runtime::admit`]).
pub const DEFAULT_LISTEN: [&str; 2] = ["/ip4/0.0.0.0/tcp/7000", "/ip4/0.0.0.0/udp/7000/quic-v1"];

/// A configuration that cannot be used. Nothing was started.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A key has a value that is out of range or malformed.
    #[error("invalid config: `{key}`: {reason}")]
    Invalid {
        /// The config-file key (flags and env vars have the same name).
        key: String,
        /// Why it is refused.
        reason: String,
    },
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has unknown keys.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (it names the key and line).
        message: String,
    },
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// Timing profile presets (see CONTRACT.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// LAN defaults: a probe every 1 s, suspicion multiplier 4, removed 30 s
    /// after death.
    #[default]
    Lan,
    /// Tests, demos, benchmarks: a probe every 500 ms, multiplier 2, removed
    /// after 10 s.
    Fast,
    /// Wide-area: a probe every 5 s, multiplier 6, removed after 120 s.
    Wan,
}

/// Failure-detection timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Timing {
    /// The probe (heartbeat) interval in ms (50 to 600 000): each node
    /// probes one member per interval.
    pub heartbeat_interval_ms: u64,
    /// The suspicion multiplier (1 to 100): a suspicion confirmed by other
    /// observers lasts this many probe intervals times log10 of the
    /// federation's size (at least 1), an unconfirmed one three times that.
    pub suspect_after_missed: u32,
    /// How long a dead member's record stays before it is removed, in ms
    /// (must exceed the shortest suspicion).
    pub removed_after_ms: u64,
}

impl Profile {
    /// The profile's timing preset (the table in
    /// [`crate::core::failure::FailureConfig::profile`]).
    pub fn timing(self) -> Timing {
        let name = match self {
            Profile::Lan => "lan",
            Profile::Fast => "fast",
            Profile::Wan => "wan",
        };
        let f = crate::core::failure::FailureConfig::profile(name).expect("a preset");
        Timing {
            heartbeat_interval_ms: f.heartbeat_interval_ms,
            suspect_after_missed: f.suspect_after_missed,
            removed_after_ms: f.removed_after_ms,
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// One layer of configuration: every key optional. The config file has
/// exactly these keys.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigLayer {
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// Node name.
    pub name: Option<String>,
    /// p2p listen multiaddrs.
    pub listen: Option<Vec<String>>,
    /// Bootstrap peer multiaddrs.
    pub bootstrap: Option<Vec<String>>,
    /// mDNS discovery on or off.
    pub mdns: Option<bool>,
    /// UDP address of the failure-detection socket (IP:PORT).
    pub probe_listen: Option<String>,
    /// HTTP API address.
    pub api: Option<String>,
    /// File holding the API bearer token.
    pub api_token_file: Option<PathBuf>,
    /// File holding the cluster secret.
    pub secret_file: Option<PathBuf>,
    /// Capability name to shell command.
    pub handlers: Option<BTreeMap<String, String>>,
    /// Capabilities served by external workers.
    pub capabilities: Option<Vec<String>>,
    /// Free-form tags.
    pub tags: Option<BTreeMap<String, String>>,
    /// Task slots.
    pub capacity: Option<u32>,
    /// Timing profile.
    pub profile: Option<Profile>,
    /// Expected federation size before the lease election starts.
    pub bootstrap_expect: Option<u32>,
    /// Voters of the control plane (1, 3 or 5).
    pub voters: Option<u32>,
    /// Log format.
    pub log_format: Option<LogFormat>,
    /// Heartbeat interval, ms (overrides the profile).
    pub heartbeat_interval_ms: Option<u64>,
    /// Missed heartbeats before suspicion (overrides the profile).
    pub suspect_after_missed: Option<u32>,
    /// Removal timeout, ms (overrides the profile).
    pub removed_after_ms: Option<u64>,
    /// How long a worker's claim lives without a heartbeat, seconds.
    pub claim_timeout_secs: Option<u64>,
    /// Largest accepted HTTP request body, bytes.
    pub max_body_bytes: Option<usize>,
    /// HTTP requests one client (IP address) may have in flight.
    pub max_requests_per_client: Option<usize>,
    /// Event streams (`/v1/events`) open at once.
    pub max_event_streams: Option<usize>,
}

macro_rules! over {
    ($hi:ident, $lo:ident, $($f:ident),*) => {
        ConfigLayer { $($f: $hi.$f.or($lo.$f)),* }
    };
}

impl ConfigLayer {
    /// Reads a TOML config file.
    pub fn from_file(path: &Path) -> Result<ConfigLayer, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        ConfigLayer::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses a config file's text; the error is TOML's message.
    pub fn from_toml(text: &str) -> Result<ConfigLayer, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim().to_owned())
    }

    /// This layer with `lower` filling what it leaves unset.
    pub fn over(self, lower: ConfigLayer) -> ConfigLayer {
        let hi = self;
        let lo = lower;
        over!(
            hi,
            lo,
            data_dir,
            name,
            listen,
            bootstrap,
            mdns,
            probe_listen,
            api,
            api_token_file,
            secret_file,
            handlers,
            capabilities,
            tags,
            capacity,
            profile,
            bootstrap_expect,
            voters,
            log_format,
            heartbeat_interval_ms,
            suspect_after_missed,
            removed_after_ms,
            claim_timeout_secs,
            max_body_bytes,
            max_requests_per_client,
            max_event_streams
        )
    }

    /// Fills defaults and validates.
    pub fn build(self) -> Result<NodeConfig, ConfigError> {
        let profile = self.profile.unwrap_or_default();
        let preset = profile.timing();
        let timing = Timing {
            heartbeat_interval_ms: self
                .heartbeat_interval_ms
                .unwrap_or(preset.heartbeat_interval_ms),
            suspect_after_missed: self
                .suspect_after_missed
                .unwrap_or(preset.suspect_after_missed),
            removed_after_ms: self.removed_after_ms.unwrap_or(preset.removed_after_ms),
        };
        let api_text = self.api.unwrap_or_else(|| "127.0.0.1:7070".to_owned());
        let api: SocketAddr = api_text
            .parse()
            .map_err(|_| invalid("api", format!("`{api_text}` is not an IP:PORT address")))?;
        let probe_listen = match self.probe_listen {
            None => None,
            Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "probe_listen",
                    format!("`{text}` is not an IP:PORT address"),
                )
            })?),
        };
        let cfg = NodeConfig {
            data_dir: self
                .data_dir
                .unwrap_or_else(|| PathBuf::from("./shoal-data")),
            name: self.name,
            listen: self
                .listen
                .unwrap_or_else(|| DEFAULT_LISTEN.iter().map(|a| (*a).to_owned()).collect()),
            bootstrap: self.bootstrap.unwrap_or_default(),
            mdns: self.mdns.unwrap_or(true),
            probe_listen,
            api,
            api_token_file: self.api_token_file,
            secret_file: self.secret_file,
            handlers: self.handlers.unwrap_or_default(),
            capabilities: self.capabilities.unwrap_or_default(),
            tags: self.tags.unwrap_or_default(),
            capacity: self.capacity.unwrap_or(8),
            profile,
            bootstrap_expect: self.bootstrap_expect.unwrap_or(1),
            voters: self.voters.unwrap_or(3),
            log_format: self.log_format.unwrap_or_default(),
            timing,
            claim_timeout_secs: self.claim_timeout_secs.unwrap_or(30),
            max_body_bytes: self.max_body_bytes.unwrap_or(1 << 20),
            max_requests_per_client: self.max_requests_per_client.unwrap_or(512),
            max_event_streams: self.max_event_streams.unwrap_or(64),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// A validated node configuration.
#[derive(Clone, Debug, Serialize)]
pub struct NodeConfig {
    /// Data directory: identity, secret, store, audit log.
    pub data_dir: PathBuf,
    /// Node name (defaults to the host name plus the short node id).
    pub name: Option<String>,
    /// p2p listen multiaddrs.
    pub listen: Vec<String>,
    /// Bootstrap peer multiaddrs.
    pub bootstrap: Vec<String>,
    /// mDNS on the LAN.
    pub mdns: bool,
    /// UDP address of the failure-detection socket; by default the IP of
    /// the first listen address and a free port.
    pub probe_listen: Option<SocketAddr>,
    /// HTTP API address.
    pub api: SocketAddr,
    /// File with the API bearer token (required when the API is not on loopback).
    pub api_token_file: Option<PathBuf>,
    /// File with the cluster secret (default `DATA_DIR/secret`).
    pub secret_file: Option<PathBuf>,
    /// Capability to shell command (`sh -c`).
    pub handlers: BTreeMap<String, String>,
    /// Capabilities served by external workers through the claim API.
    pub capabilities: Vec<String>,
    /// Free-form tags.
    pub tags: BTreeMap<String, String>,
    /// Task slots (1 to 10 000).
    pub capacity: u32,
    /// Timing profile.
    pub profile: Profile,
    /// Expected federation size (1 to 1000): the members a node waits to
    /// see before the control plane is founded, and the number of its
    /// founding voters.
    pub bootstrap_expect: u32,
    /// Voters the control plane aims for (1, 3 or 5; default 3).
    pub voters: u32,
    /// Log format.
    pub log_format: LogFormat,
    /// Failure-detection timing.
    pub timing: Timing,
    /// Worker claim lifetime without heartbeat, seconds (1 to 3600).
    pub claim_timeout_secs: u64,
    /// Largest HTTP request body, bytes (1 KiB to 64 MiB).
    pub max_body_bytes: usize,
    /// HTTP requests one client (IP address) may have in flight, long
    /// polls included (1 to 100,000; default 512); more are answered 429.
    pub max_requests_per_client: usize,
    /// Event streams open at once (1 to 10,000; default 64); more are
    /// answered 429.
    pub max_event_streams: usize,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
}

impl NodeConfig {
    /// Where the failure-detection socket binds: `probe_listen`, or the IP
    /// of the first listen address (`/ip4/A/...` or `/ip6/A/...`) and a
    /// free port, or every IPv4 interface.
    pub fn probe_listen_addr(&self) -> SocketAddr {
        if let Some(addr) = self.probe_listen {
            return addr;
        }
        let ip = self.listen.iter().find_map(|a| {
            let mut parts = a.split('/').skip(1);
            match (parts.next(), parts.next()) {
                (Some("ip4" | "ip6"), Some(ip)) => ip.parse::<std::net::IpAddr>().ok(),
                _ => None,
            }
        });
        SocketAddr::new(ip.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()), 0)
    }

    /// Checks every key's range and format.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=10_000).contains(&self.capacity) {
            return Err(invalid(
                "capacity",
                format!("{} is not between 1 and 10000", self.capacity),
            ));
        }
        if !(1..=1000).contains(&self.bootstrap_expect) {
            return Err(invalid("bootstrap_expect", "must be between 1 and 1000"));
        }
        if ![1, 3, 5].contains(&self.voters) {
            return Err(invalid("voters", "must be 1, 3 or 5"));
        }
        let t = &self.timing;
        if !(50..=600_000).contains(&t.heartbeat_interval_ms) {
            return Err(invalid(
                "heartbeat_interval_ms",
                "must be between 50 and 600000",
            ));
        }
        if !(1..=100).contains(&t.suspect_after_missed) {
            return Err(invalid("suspect_after_missed", "must be between 1 and 100"));
        }
        let suspect_ms = t.heartbeat_interval_ms * t.suspect_after_missed as u64;
        if t.removed_after_ms <= suspect_ms {
            return Err(invalid(
                "removed_after_ms",
                format!("must be longer than the suspicion time ({suspect_ms} ms)"),
            ));
        }
        if !(1..=3600).contains(&self.claim_timeout_secs) {
            return Err(invalid("claim_timeout_secs", "must be between 1 and 3600"));
        }
        if !(1..=100_000).contains(&self.max_requests_per_client) {
            return Err(invalid(
                "max_requests_per_client",
                "must be between 1 and 100000",
            ));
        }
        if !(1..=10_000).contains(&self.max_event_streams) {
            return Err(invalid("max_event_streams", "must be between 1 and 10000"));
        }
        if !(1024..=64 << 20).contains(&self.max_body_bytes) {
            return Err(invalid(
                "max_body_bytes",
                "must be between 1024 and 67108864",
            ));
        }
        if let Some(name) = &self.name {
            if !valid_name(name) {
                return Err(invalid("name", "use 1 to 128 letters, digits, or - _ . :"));
            }
        }
        for (cap, cmd) in &self.handlers {
            if !valid_name(cap) {
                return Err(invalid(
                    "handlers",
                    format!("capability `{cap}` must be 1 to 128 letters, digits, or - _ . :"),
                ));
            }
            if cmd.trim().is_empty() {
                return Err(invalid(
                    "handlers",
                    format!("the command for `{cap}` is empty"),
                ));
            }
        }
        for cap in &self.capabilities {
            if !valid_name(cap) {
                return Err(invalid(
                    "capabilities",
                    format!("`{cap}` must be 1 to 128 letters, digits, or - _ . :"),
                ));
            }
        }
        for addr in self.listen.iter().chain(&self.bootstrap) {
            if !addr.starts_with('/') {
                return Err(invalid(
                    "listen/bootstrap",
                    format!("`{addr}` is not a multiaddr (e.g. /ip4/127.0.0.1/tcp/7000)"),
                ));
            }
        }
        if !self.api.ip().is_loopback() && self.api_token_file.is_none() {
            return Err(invalid(
                "api_token_file",
                format!(
                    "the API listens on non-loopback address {}; a token file is required",
                    self.api
                ),
            ));
        }
        Ok(())
    }

    /// All capabilities this node offers: handler-run and worker-served.
    pub fn all_capabilities(&self) -> Vec<String> {
        let mut caps: Vec<String> = self.handlers.keys().cloned().collect();
        caps.extend(self.capabilities.iter().cloned());
        caps.sort();
        caps.dedup();
        caps
    }

    /// Where the store lives.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("store")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_file_and_file_beats_defaults() {
        let file: ConfigLayer =
            toml::from_str("capacity = 4\nprofile = \"fast\"\nname = \"from-file\"").unwrap();
        let flags = ConfigLayer {
            name: Some("from-flag".into()),
            ..ConfigLayer::default()
        };
        let cfg = flags.over(file).build().unwrap();
        assert_eq!(cfg.name.as_deref(), Some("from-flag"));
        assert_eq!(cfg.capacity, 4);
        assert_eq!(cfg.timing.heartbeat_interval_ms, 500);
        assert_eq!(cfg.api.to_string(), "127.0.0.1:7070");
        assert_eq!(cfg.listen, DEFAULT_LISTEN, "TCP and QUIC by default");
    }

    #[test]
    fn invalid_values_name_the_key() {
        let err = ConfigLayer {
            capacity: Some(0),
            ..Default::default()
        }
        .build()
        .unwrap_err();
        assert!(err.to_string().contains("`capacity`"), "{err}");
        let err = ConfigLayer {
            api: Some("0.0.0.0:7070".into()),
            ..Default::default()
        }
        .build()
        .unwrap_err();
        assert!(err.to_string().contains("api_token_file"), "{err}");
        let err = ConfigLayer {
            removed_after_ms: Some(100),
            ..Default::default()
        }
        .build()
        .unwrap_err();
        assert!(err.to_string().contains("removed_after_ms"), "{err}");
        let err = toml::from_str::<ConfigLayer>("capacityy = 3").unwrap_err();
        assert!(err.to_string().contains("capacityy"), "{err}");
    }

    #[test]
    fn example_config_parses_and_validates() {
        let text = include_str!("../config.example.toml");
        let layer: ConfigLayer = toml::from_str(text).unwrap();
        layer.build().unwrap();
    }
}
