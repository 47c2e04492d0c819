//! The `sutra` binary: thin wrappers that parse flags and call the `sutra-grid` library.

/// mimalloc: the write path allocates per item from many tasks at once, where glibc malloc's
/// arena locks showed up in profiles (bench wal).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;
mod bench_api;
mod bench_failover;
mod bench_search;
mod cluster;
mod dev;
mod http;
mod http_client;
mod import;
mod sample;
mod verbs;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sutra_grid::io::{Disk, RealDisk};
use sutra_grid::limits;
use sutra_grid::node::{NodeConfig, StorageNode};
use sutra_grid::store::KeyRange;

#[derive(Parser)]
#[command(name = "sutra", version, about = "Sutra Grid: a distributed store and reasoning engine for concept graphs")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a whole local grid with sample data: master + HTTP API, agent, 3 storage processes.
    Dev(dev::DevArgs),
    /// Run a storage node (in a grid with --master, else standalone).
    Storage(StorageArgs),
    /// Run the master: membership, node states, the shard map.
    Master(cluster::MasterArgs),
    /// Run a machine's agent: spawns and supervises its storage processes.
    Agent(cluster::AgentArgs),
    /// Create the shard map (idempotent: the same request again changes nothing).
    Init(cluster::InitArgs),
    /// Show nodes, agents, shards and fault tolerance; exits non-zero unless healthy.
    Status(cluster::StatusArgs),
    /// Mark a node Draining (or undo it).
    Drain(cluster::DrainArgs),
    /// Show the replica moves and primary transfers the master's rebalancer would start, and
    /// those under way (`--dry-run`: print only).
    Rebalance(cluster::RebalanceArgs),
    /// Split a shard in two at a key (default: the key that halves its concepts), while it serves.
    Split(cluster::SplitArgs),
    /// Merge a shard with its neighbour, while it serves (the neighbour's writes pause while
    /// its data is copied).
    Merge(cluster::MergeArgs),
    /// Learn sentences (or a JSON /learn request from --file).
    Learn(verbs::LearnArgs),
    /// Forget a concept (and its associations) or one association.
    Forget(verbs::ForgetArgs),
    /// Look a concept up, by label or 32-hex-char id.
    Concept(verbs::ConceptArgs),
    /// List a concept's neighbours.
    Neighbors(verbs::NeighborsArgs),
    /// Find and explain the paths between two concepts.
    Reason(verbs::ReasonArgs),
    /// Vector search: the concepts nearest a text.
    Search(verbs::SearchArgs),
    /// Import WordNet, jsonl or csv into the grid through the API.
    Import(import::ImportArgs),
    /// Benchmarks; each prints one JSON object.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
}

#[derive(clap::Args)]
struct StorageArgs {
    /// Directory holding this node's shards.
    #[arg(long)]
    data_dir: PathBuf,
    /// Address to serve the Storage gRPC service on.
    #[arg(long, default_value = "127.0.0.1:7100")]
    listen: SocketAddr,
    /// Create shard 0 owning the whole key space if the node has no shards (no master yet).
    #[arg(long)]
    standalone: bool,
    /// Width of concept vectors.
    #[arg(long, default_value_t = limits::VECTOR_DIM_DEFAULT)]
    vector_dim: usize,
    /// Join the grid this master coordinates (agents pass it; implies not --standalone).
    #[arg(long, conflicts_with = "standalone", requires_all = ["agent", "gossip"])]
    master: Option<String>,
    /// The supervising agent's name (grid mode).
    #[arg(long)]
    agent: Option<String>,
    /// This process's slot under its agent (grid mode).
    #[arg(long, default_value_t = 0)]
    slot: u32,
    /// UDP address for SWIM gossip (grid mode).
    #[arg(long)]
    gossip: Option<SocketAddr>,
    /// Spawn generation, set by the agent (grid mode).
    #[arg(long, default_value_t = 0)]
    generation: u64,
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Opens a node on `data_dir`, creating shard 0 over the whole key space when asked and absent.
pub async fn open_node(data_dir: &std::path::Path, vector_dim: usize, standalone: bool) -> Result<Arc<StorageNode>> {
    if vector_dim == 0 || vector_dim > limits::VECTOR_DIM_MAX {
        anyhow::bail!("--vector-dim must be between 1 and {}", limits::VECTOR_DIM_MAX);
    }
    let disk: Arc<dyn Disk> =
        Arc::new(RealDisk::new(data_dir).with_context(|| format!("cannot use data dir {}", data_dir.display()))?);
    let node = StorageNode::open(disk, NodeConfig::with_vector_dim(vector_dim)).await?;
    if standalone && node.list().is_empty() {
        node.create_shard(0, KeyRange::ALL, false).await?;
    }
    Ok(node)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    biased;
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
    let _ = tokio::signal::ctrl_c().await;
}

async fn run_storage(args: StorageArgs) -> Result<()> {
    if let (Some(master), Some(agent), Some(gossip)) = (args.master.clone(), args.agent.clone(), args.gossip) {
        if args.vector_dim == 0 || args.vector_dim > limits::VECTOR_DIM_MAX {
            anyhow::bail!("--vector-dim must be between 1 and {}", limits::VECTOR_DIM_MAX);
        }
        let membership = sutra_grid::node::cluster::Membership {
            master,
            agent,
            slot: args.slot,
            storage_addr: args.listen,
            gossip_addr: gossip,
            generation: args.generation,
        };
        return cluster::storage_in_grid(&args.data_dir, args.vector_dim, membership).await;
    }
    tracing::info!(data_dir = %args.data_dir.display(), listen = %args.listen, standalone = args.standalone,
        vector_dim = args.vector_dim, "starting storage node");
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let node = open_node(&args.data_dir, args.vector_dim, args.standalone).await?;
    for (id, slot) in node.list() {
        match slot {
            sutra_grid::node::ShardSlot::Serving(s) => {
                tracing::info!(shard = id, lsn = s.recovery.last_lsn, "serving")
            }
            sutra_grid::node::ShardSlot::Failed { reason, .. } => {
                tracing::error!(shard = id, %reason, "not serving")
            }
        }
    }
    if node.list().is_empty() {
        tracing::warn!(
            "this node hosts no shards yet; create one with the CreateShard RPC, or start with --standalone"
        );
    }
    println!("storage node listening on {}", args.listen);
    sutra_grid::node::serve_listener(node, listener, shutdown_signal())
        .await
        .with_context(|| format!("serving on {}", args.listen))?;
    tracing::info!("storage node stopped");
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    if matches!(cli.cmd, Cmd::Dev(_)) && std::env::var_os("RUST_LOG").is_none() {
        // The grid's storage processes inherit it: `sutra dev` shows warnings, not chatter.
        // Set before the runtime starts any thread.
        std::env::set_var("RUST_LOG", "warn");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.cmd {
        Cmd::Dev(a) => {
            init_tracing("warn");
            rt.block_on(dev::run(a))
        }
        Cmd::Storage(a) => {
            init_tracing("info");
            rt.block_on(run_storage(a))
        }
        Cmd::Master(a) => {
            init_tracing("info");
            rt.block_on(cluster::master(a))
        }
        Cmd::Agent(a) => {
            init_tracing("info");
            rt.block_on(cluster::agent(a))
        }
        Cmd::Init(a) => {
            init_tracing("warn");
            rt.block_on(cluster::init(a))
        }
        Cmd::Status(a) => {
            init_tracing("warn");
            rt.block_on(cluster::status(a))
        }
        Cmd::Drain(a) => {
            init_tracing("warn");
            rt.block_on(cluster::drain(a))
        }
        Cmd::Rebalance(a) => {
            init_tracing("warn");
            rt.block_on(cluster::rebalance(a))
        }
        Cmd::Split(a) => {
            init_tracing("warn");
            rt.block_on(cluster::split(a))
        }
        Cmd::Merge(a) => {
            init_tracing("warn");
            rt.block_on(cluster::merge(a))
        }
        Cmd::Learn(a) => {
            init_tracing("warn");
            rt.block_on(verbs::learn(a))
        }
        Cmd::Forget(a) => {
            init_tracing("warn");
            rt.block_on(verbs::forget(a))
        }
        Cmd::Concept(a) => {
            init_tracing("warn");
            rt.block_on(verbs::concept(a))
        }
        Cmd::Neighbors(a) => {
            init_tracing("warn");
            rt.block_on(verbs::neighbors(a))
        }
        Cmd::Reason(a) => {
            init_tracing("warn");
            rt.block_on(verbs::reason(a))
        }
        Cmd::Search(a) => {
            init_tracing("warn");
            rt.block_on(verbs::search(a))
        }
        Cmd::Import(a) => {
            init_tracing("warn");
            rt.block_on(import::run(a))
        }
        Cmd::Bench(b) => {
            init_tracing("warn");
            rt.block_on(bench::run(b))
        }
    }
}
