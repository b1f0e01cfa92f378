//! `shoal start` and `shoal init`.

use super::CliError;
use crate::api::{self, AppState};
use crate::config::{ConfigLayer, LogFormat, NodeConfig, Profile};
use crate::runtime::executor::Handlers;
use crate::runtime::identity;
use crate::runtime::Node;
use clap::Args;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `shoal start` flags. Each has a `SHOAL_*` environment variable and a
/// config-file key of the same name.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// Config file (default DATA_DIR/config.toml when it exists).
    #[arg(long, env = "SHOAL_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory.
    #[arg(long, env = "SHOAL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Node name.
    #[arg(long, env = "SHOAL_NAME")]
    name: Option<String>,
    /// p2p listen multiaddr (repeatable).
    #[arg(long, env = "SHOAL_LISTEN", value_delimiter = ',')]
    listen: Vec<String>,
    /// Bootstrap peer multiaddr (repeatable).
    #[arg(long, env = "SHOAL_BOOTSTRAP", value_delimiter = ',')]
    bootstrap: Vec<String>,
    /// Turn mDNS discovery off.
    #[arg(long, env = "SHOAL_NO_MDNS")]
    no_mdns: bool,
    /// UDP IP:PORT of the failure-detection socket (default: the first
    /// listen address's IP, a free port).
    #[arg(long, env = "SHOAL_PROBE_LISTEN")]
    probe_listen: Option<String>,
    /// HTTP API address, from the global `--api` (IP:PORT, or a URL whose
    /// host and port are used; port 0 picks a free one).
    #[arg(skip)]
    pub(super) api_addr: Option<String>,
    /// File with the API bearer token.
    #[arg(long, env = "SHOAL_API_TOKEN_FILE")]
    api_token_file: Option<PathBuf>,
    /// File with the cluster secret (SHOAL_SECRET may hold the secret itself).
    #[arg(long, env = "SHOAL_SECRET_FILE")]
    secret_file: Option<PathBuf>,
    /// Run tasks of capability NAME with a shell command (repeatable).
    #[arg(long = "handler", env = "SHOAL_HANDLER", value_name = "NAME=COMMAND")]
    handlers: Vec<String>,
    /// A capability served by external workers (repeatable).
    #[arg(long = "capability", env = "SHOAL_CAPABILITY", value_delimiter = ',')]
    capabilities: Vec<String>,
    /// A tag KEY=VALUE (repeatable).
    #[arg(long = "tag", env = "SHOAL_TAG", value_delimiter = ',')]
    tags: Vec<String>,
    /// Task slots.
    #[arg(long, env = "SHOAL_CAPACITY")]
    capacity: Option<u32>,
    /// Timing profile.
    #[arg(long, env = "SHOAL_PROFILE", value_enum)]
    profile: Option<Profile>,
    /// Expected federation size.
    #[arg(long, env = "SHOAL_BOOTSTRAP_EXPECT")]
    bootstrap_expect: Option<u32>,
    /// Voters of the control plane (1, 3 or 5).
    #[arg(long, env = "SHOAL_VOTERS")]
    voters: Option<u32>,
    /// Log format.
    #[arg(long, env = "SHOAL_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// Heartbeat interval in ms (overrides the profile).
    #[arg(long, env = "SHOAL_HEARTBEAT_INTERVAL_MS")]
    heartbeat_interval_ms: Option<u64>,
    /// Missed heartbeats before suspicion (overrides the profile).
    #[arg(long, env = "SHOAL_SUSPECT_AFTER_MISSED")]
    suspect_after_missed: Option<u32>,
    /// Removal timeout in ms (overrides the profile).
    #[arg(long, env = "SHOAL_REMOVED_AFTER_MS")]
    removed_after_ms: Option<u64>,
    /// Worker claim lifetime without heartbeat, seconds.
    #[arg(long, env = "SHOAL_CLAIM_TIMEOUT_SECS")]
    claim_timeout_secs: Option<u64>,
    /// Largest HTTP request body, bytes.
    #[arg(long, env = "SHOAL_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    /// HTTP requests one client (IP address) may have in flight (default 512).
    #[arg(long, env = "SHOAL_MAX_REQUESTS_PER_CLIENT")]
    max_requests_per_client: Option<usize>,
    /// Event streams open at once (default 64).
    #[arg(long, env = "SHOAL_MAX_EVENT_STREAMS")]
    max_event_streams: Option<usize>,
}

fn pairs(key: &str, items: &[String]) -> Result<Option<BTreeMap<String, String>>, CliError> {
    if items.is_empty() {
        return Ok(None);
    }
    let mut out = BTreeMap::new();
    for item in items {
        let (k, v) = item.split_once('=').ok_or_else(|| {
            CliError::usage(format!(
                "invalid config: `{key}`: `{item}` is not NAME=VALUE"
            ))
        })?;
        out.insert(k.trim().to_owned(), v.to_owned());
    }
    Ok(Some(out))
}

fn non_empty(v: Vec<String>) -> Option<Vec<String>> {
    (!v.is_empty()).then_some(v)
}

impl StartArgs {
    fn layer(self) -> Result<(ConfigLayer, Option<PathBuf>), CliError> {
        let layer = ConfigLayer {
            data_dir: self.data_dir,
            name: self.name,
            listen: non_empty(self.listen),
            bootstrap: non_empty(self.bootstrap),
            mdns: self.no_mdns.then_some(false),
            probe_listen: self.probe_listen,
            api: self.api_addr,
            api_token_file: self.api_token_file,
            secret_file: self.secret_file,
            handlers: pairs("handlers", &self.handlers)?,
            capabilities: non_empty(self.capabilities),
            tags: pairs("tags", &self.tags)?,
            capacity: self.capacity,
            profile: self.profile,
            bootstrap_expect: self.bootstrap_expect,
            voters: self.voters,
            log_format: self.log_format,
            heartbeat_interval_ms: self.heartbeat_interval_ms,
            suspect_after_missed: self.suspect_after_missed,
            removed_after_ms: self.removed_after_ms,
            claim_timeout_secs: self.claim_timeout_secs,
            max_body_bytes: self.max_body_bytes,
            max_requests_per_client: self.max_requests_per_client,
            max_event_streams: self.max_event_streams,
        };
        Ok((layer, self.config))
    }
}

/// Resolves flags, environment, file and defaults into a config.
fn resolve(args: StartArgs) -> Result<NodeConfig, CliError> {
    let (flags, file) = args.layer()?;
    let file = file.or_else(|| {
        let dir = flags
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("./shoal-data"));
        let p = dir.join("config.toml");
        p.exists().then_some(p)
    });
    let from_file = match file {
        Some(p) => ConfigLayer::from_file(&p).map_err(|e| CliError::usage(e.to_string()))?,
        None => ConfigLayer::default(),
    };
    flags
        .over(from_file)
        .build()
        .map_err(|e| CliError::usage(e.to_string()))
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let rate = crate::runtime::lograte::RateLimit::default();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.finish().with(rate).try_init(),
        LogFormat::Json => builder.json().finish().with(rate).try_init(),
    };
}

fn read_token(path: &Path) -> Result<Arc<str>, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::usage(format!(
            "invalid config: `api_token_file`: {}: {e}",
            path.display()
        ))
    })?;
    let token = text.trim();
    if token.len() < 16 {
        return Err(CliError::usage(format!(
            "invalid config: `api_token_file`: the token in {} must be at least 16 characters",
            path.display()
        )));
    }
    Ok(Arc::from(token))
}

/// The line `shoal start` prints once it is ready:
/// `shoal node ID ready: name=NAME p2p=ADDR,... api=http://IP:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// Node id.
    pub id: String,
    /// The first p2p address (with `/p2p/ID`), or empty.
    pub p2p: String,
    /// API base URL.
    pub api: String,
}

impl Ready {
    /// Parses a ready line; `None` if it is not one.
    pub fn parse(line: &str) -> Option<Ready> {
        let mut words = line.split_whitespace();
        let id = words.nth(2)?.to_owned();
        let field = |key: &str| line.split_whitespace().find_map(|w| w.strip_prefix(key));
        Some(Ready {
            id,
            p2p: field("p2p=")?
                .split(',')
                .next()
                .unwrap_or_default()
                .to_owned(),
            api: field("api=")?.to_owned(),
        })
    }
}

/// `shoal start`.
pub fn start(args: StartArgs) -> Result<(), CliError> {
    let cfg = resolve(args)?;
    init_tracing(cfg.log_format);
    // Handler commands run under `shoal handler-guard`, which dies with
    // this process (see `cli/guard.rs`).
    if let Ok(exe) = std::env::current_exe() {
        crate::runtime::executor::set_guard(exe);
    }
    let token = cfg.api_token_file.as_deref().map(read_token).transpose()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the runtime: {e}")))?;
    rt.block_on(serve(cfg, token))
}

async fn serve(cfg: NodeConfig, token: Option<Arc<str>>) -> Result<(), CliError> {
    let api_addr = cfg.api;
    let listener = tokio::net::TcpListener::bind(api_addr)
        .await
        .map_err(|e| CliError::failed(format!("cannot listen on {api_addr} for the API: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| CliError::failed(e.to_string()))?;
    let node = Node::start(cfg, Handlers::new())
        .await
        .map_err(|e| CliError::failed(e.to_string()))?;
    let handle = node.handle();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let state = AppState::new(handle.clone(), token);
    let server = tokio::spawn(api::serve(listener, state, async {
        let _ = stop_rx.await;
    }));
    {
        let info = handle.info();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "shoal node {} ready: name={} p2p={} api=http://{bound}",
            info.id,
            info.name,
            info.p2p_addrs.join(",")
        );
        let _ = out.flush();
    }
    wait_for_signal().await;
    tracing::info!("signal received: leaving gracefully (a second signal exits at once)");
    tokio::spawn(async {
        wait_for_signal().await;
        eprintln!("second signal: exiting now");
        std::process::exit(130);
    });
    let result = node.shutdown().await;
    let _ = stop_tx.send(());
    let _ = server.await;
    result.map_err(|e| CliError::failed(format!("shutdown: {e}")))
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `shoal init`.
pub fn init(data_dir: &Path) -> Result<(), CliError> {
    let fail = |e: identity::IdentityError| CliError::failed(e.to_string());
    let (key, created) = identity::load_or_create_identity(data_dir).map_err(fail)?;
    let secret_path = data_dir.join("secret");
    let had_secret = secret_path.exists();
    identity::load_or_create_secret(None, None, data_dir).map_err(fail)?;
    let config_path = data_dir.join("config.toml");
    let had_config = config_path.exists();
    if !had_config {
        let text = include_str!("../../config.example.toml").replace(
            "data_dir = \"./shoal-data\"",
            &format!("data_dir = {:?}", data_dir.display().to_string()),
        );
        std::fs::write(&config_path, text).map_err(|e| {
            CliError::failed(format!("cannot write {}: {e}", config_path.display()))
        })?;
    }
    let said = |existed: bool| if existed { "kept" } else { "created" };
    println!("node id:  {}", key.public().to_peer_id());
    println!(
        "identity: {} ({})",
        data_dir.join("identity.key").display(),
        said(!created)
    );
    println!(
        "secret:   {} ({}) — copy it to every node of this federation",
        secret_path.display(),
        said(had_secret)
    );
    println!("config:   {} ({})", config_path.display(), said(had_config));
    Ok(())
}
