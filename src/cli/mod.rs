//! The `shoal` command line: the daemon (`start`, `init`, `demo`) and the
//! client commands that talk to a node's HTTP API. The only place that
//! formats for people.

mod client;
mod commands;
mod demo;
mod guard;
mod start;
mod table;

pub use start::Ready;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Exit code of a failed operation.
pub const EXIT_FAILED: i32 = 1;
/// Exit code of bad usage or an invalid config.
pub const EXIT_USAGE: i32 = 2;

/// An error at the CLI edge, with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    /// Exit code.
    pub code: i32,
    /// Message for people.
    pub message: String,
}

impl CliError {
    /// A failed operation (exit 1).
    pub fn failed(message: impl Into<String>) -> Self {
        CliError {
            code: EXIT_FAILED,
            message: message.into(),
        }
    }

    /// Bad usage (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        CliError {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }
}

/// Shoal: a peer-to-peer federation engine.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about, propagate_version = true)]
pub struct Cli {
    /// The node's API: the URL client commands talk to, and for `start` the
    /// address to serve on (IP:PORT; default 127.0.0.1:7070).
    #[arg(long, global = true, env = "SHOAL_API")]
    pub api: Option<String>,
    /// File holding the API token (client commands); SHOAL_TOKEN may hold the token itself.
    #[arg(long, global = true, env = "SHOAL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a data dir: identity, config file, cluster secret.
    Init {
        /// Data directory.
        #[arg(long, env = "SHOAL_DATA_DIR", default_value = "./shoal-data")]
        data_dir: PathBuf,
    },
    /// Run a node in the foreground.
    Start(Box<start::StartArgs>),
    /// This node, the cluster summary, the lease holder.
    Status,
    /// Members with status, load, capacity, tags.
    Nodes {
        /// Only members with this status.
        #[arg(long)]
        status: Option<String>,
    },
    /// Drain or remove a node.
    #[command(subcommand)]
    Node(NodeCmd),
    /// The lease holder; `shoal leader recover` after a lost majority.
    Leader {
        /// What to do (nothing: show the holder).
        #[command(subcommand)]
        action: Option<LeaderCmd>,
    },
    /// Submit, inspect, cancel and wait for tasks.
    #[command(subcommand)]
    Task(TaskCmd),
    /// The knowledge store.
    #[command(subcommand)]
    Kv(KvCmd),
    /// Show or set the cluster's default placement strategy.
    Balance {
        /// round_robin, least_loaded, least_tasks, random, weighted or hash.
        strategy: Option<String>,
    },
    /// Follow the event stream.
    Events,
    /// Totals and the convergence digest.
    Stats,
    /// The audit log, newest first.
    Audit {
        /// How many records.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Start a local cluster on loopback and take a scripted tour.
    Demo(demo::DemoArgs),
    /// Runs a handler command for a node (internal: the node starts it).
    #[command(name = "handler-guard", hide = true)]
    HandlerGuard {
        /// The node's pid.
        #[arg(long)]
        parent: u32,
        /// The command, for `sh -c`.
        cmd: String,
    },
}

/// `shoal leader ...`
#[derive(Debug, Subcommand)]
pub enum LeaderCmd {
    /// Recover from a lost majority of the control plane's voters: run on a
    /// surviving voter, it becomes the only voter and takes the lease; the
    /// autopilot adds voters back (docs/lease.md). Only when the lost
    /// voters are gone for good.
    Recover,
}

/// `shoal node ...`
#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// Stop placing tasks on a node; it finishes what it has.
    Drain {
        /// Node id.
        id: String,
    },
    /// Force-remove a dead or departed node.
    Remove {
        /// Node id.
        id: String,
    },
}

/// `shoal task ...`
#[derive(Debug, Subcommand)]
pub enum TaskCmd {
    /// Submit a task.
    Submit(SubmitArgs),
    /// Show a task.
    Get {
        /// Task id.
        id: String,
    },
    /// List tasks.
    List {
        /// Only tasks with this status.
        #[arg(long)]
        status: Option<String>,
        /// Only tasks on this node.
        #[arg(long)]
        node: Option<String>,
        /// Only tasks of this capability.
        #[arg(long)]
        capability: Option<String>,
        /// At most this many, the newest (default 1000).
        #[arg(long)]
        limit: Option<usize>,
        /// Only tasks older than this cursor (the `next` an earlier page
        /// printed).
        #[arg(long)]
        before: Option<String>,
    },
    /// Cancel a task.
    Cancel {
        /// Task id.
        id: String,
    },
    /// Wait until a task finishes; exit 0 if it succeeded.
    Wait {
        /// Task id.
        id: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
}

/// `shoal task submit` arguments.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Required capability.
    #[arg(long)]
    pub capability: String,
    /// Payload JSON, or @FILE.
    #[arg(long)]
    pub payload: Option<String>,
    /// Idempotency key: the same key gives the same task.
    #[arg(long)]
    pub key: Option<String>,
    /// Placement strategy for this task.
    #[arg(long)]
    pub strategy: Option<String>,
    /// Affinity key for the hash strategy.
    #[arg(long)]
    pub affinity: Option<String>,
    /// Attempts before the task fails.
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Per-attempt timeout in seconds.
    #[arg(long)]
    pub timeout: Option<u64>,
}

/// `shoal kv ...`
#[derive(Debug, Subcommand)]
pub enum KvCmd {
    /// Write a value (JSON; text that is not JSON is stored as a string).
    Put {
        /// Namespace.
        ns: String,
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
    /// Read a value.
    Get {
        /// Namespace.
        ns: String,
        /// Key.
        key: String,
    },
    /// Delete a key.
    Del {
        /// Namespace.
        ns: String,
        /// Key.
        key: String,
    },
    /// List a namespace, or what changed since a version vector.
    List {
        /// Namespace.
        ns: String,
        /// Version vector: NODE:N,NODE:N or JSON.
        #[arg(long)]
        since: Option<String>,
        /// At most this many entries, in key order (default 1000).
        #[arg(long)]
        limit: Option<usize>,
        /// Only keys after this one (the `next` an earlier page printed).
        #[arg(long)]
        after: Option<String>,
    },
    /// Set a namespace's conflict policy: lww, mv or set.
    Policy {
        /// Namespace.
        ns: String,
        /// lww, mv or set.
        policy: String,
    },
}

/// Runs the parsed command; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    let result = match cli.command {
        Command::Init { ref data_dir } => start::init(data_dir),
        Command::Start(mut args) => {
            args.api_addr = cli.api.as_deref().map(|a| {
                let a = a
                    .trim_start_matches("http://")
                    .trim_start_matches("https://");
                a.trim_end_matches('/').to_owned()
            });
            start::start(*args)
        }
        Command::Demo(ref args) => demo::demo(args),
        Command::HandlerGuard { parent, ref cmd } => return guard::run(parent, cmd),
        _ => commands::run_client(cli),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {}", e.message);
            e.code
        }
    }
}
