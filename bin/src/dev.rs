//! `sutra dev` (a whole local grid with sample data on this machine) and the small query verbs
//! that talk to a storage node. Until the control plane lands, the "grid" is one storage node
//! hosting one shard that owns the whole key space.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use sutra_grid::client::StorageClient;
use sutra_grid::ids::ConceptId;
use sutra_grid::model::{Direction, EdgeFilter};
use sutra_grid::node::convert::{id_from_pb, kind_from_pb};
use sutra_proto as pb;

#[derive(clap::Args)]
pub struct DevArgs {
    /// Where the grid keeps its data; reused on the next run.
    #[arg(long, default_value = "./sutra-data")]
    data_dir: PathBuf,
    /// Address of the storage node's gRPC service.
    #[arg(long, default_value = "127.0.0.1:7100")]
    listen: SocketAddr,
    /// Run the example queries, then stop (instead of serving until Ctrl-C).
    #[arg(long)]
    no_wait: bool,
}

#[derive(clap::Args)]
pub struct QueryArgs {
    /// A label ("Eiffel Tower") or a 32-hex-char concept id.
    concept: String,
    /// Storage node address.
    #[arg(long, default_value = "127.0.0.1:7100")]
    node: String,
    #[arg(long, default_value_t = 0)]
    shard: u32,
    /// Most neighbours to list.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// text or json.
    #[arg(long, default_value = "text")]
    format: String,
}

fn resolve(s: &str) -> ConceptId {
    ConceptId::parse_hex(s).unwrap_or_else(|| ConceptId::from_label(s))
}

fn label_of(labels: &HashMap<ConceptId, String>, id: ConceptId) -> String {
    labels.get(&id).cloned().unwrap_or_else(|| id.to_string())
}

async fn labels(client: &StorageClient, shard: u32, ids: &[ConceptId]) -> Result<HashMap<ConceptId, String>> {
    let r = client.get_concepts(shard, ids).await?;
    Ok(r.found.into_iter().filter_map(|c| Some((id_from_pb(c.id.as_ref()?), c.label))).collect())
}

pub async fn run(args: DevArgs) -> Result<()> {
    let t0 = Instant::now();
    // Bind first: a taken port fails here, clearly, instead of talking to someone else's node.
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| {
        format!("cannot listen on {}; is another grid running? pick another address with --listen", args.listen)
    })?;
    let node = crate::open_node(&args.data_dir, sutra_grid::limits::VECTOR_DIM_DEFAULT, true).await?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(sutra_grid::node::serve_listener(node, listener, async {
        let _ = stop_rx.await;
    }));
    let addr = args.listen.to_string();
    let client = StorageClient::connect(&addr).await.context("connecting to the local storage node")?;
    let info = client.shard_info(0).await?;
    if info.concepts == 0 {
        let batch = crate::sample::batch()?;
        let r = client.write_batch(0, &batch).await?;
        println!(
            "loaded sample: {} concepts, {} associations (durable at lsn {})",
            batch.concepts.len(),
            batch.associations.len(),
            r.lsn
        );
    } else {
        println!("reusing data in {}: {} concepts, {} edges", args.data_dir.display(), info.concepts, info.out_edges);
    }
    println!(
        "grid up in {} ms: 1 storage node at {addr}, shard 0 owns the whole key space\n",
        t0.elapsed().as_millis()
    );

    println!("$ sutra concept \"Eiffel Tower\"");
    print_concept(&client, 0, resolve("Eiffel Tower"), "text").await?;
    println!("\n$ sutra neighbors Paris");
    print_neighbors(&client, 0, resolve("Paris"), 10, "text").await?;
    println!("\nshortest path Medical_Diagnosis -> Financial_Fraud (one batched expand RPC per BFS level):");
    let t = Instant::now();
    let (path, rpcs) = find_path(&client, 0, resolve("Medical_Diagnosis"), resolve("Financial_Fraud"), 6).await?;
    match path {
        Some((p, hops)) => {
            println!("  {p}\n  ({hops} hops, {rpcs} expand RPCs, {:.2} ms)", t.elapsed().as_secs_f64() * 1e3)
        }
        None => println!("  no path within 6 hops"),
    }
    if args.no_wait {
        let _ = stop_tx.send(());
        server.await??;
        return Ok(());
    }
    println!("\nserving at {addr}; try `sutra concept Paris` or `sutra neighbors France`. Ctrl-C stops.");
    crate::shutdown_signal().await;
    let _ = stop_tx.send(());
    server.await??;
    println!("stopped; data kept in {}", args.data_dir.display());
    Ok(())
}

/// Level-synchronous BFS from `start` (both directions), one Expand RPC per level.
async fn find_path(
    client: &StorageClient,
    shard: u32,
    start: ConceptId,
    end: ConceptId,
    max_depth: usize,
) -> Result<(Option<(String, usize)>, usize)> {
    let filter = EdgeFilter { direction: Direction::Both, ..Default::default() };
    let mut parent: HashMap<ConceptId, (ConceptId, String, bool, f32)> = HashMap::new();
    let mut frontier = vec![start];
    let mut seen = std::collections::HashSet::from([start]);
    let mut rpcs = 0;
    for _ in 0..max_depth {
        if frontier.is_empty() || seen.contains(&end) {
            break;
        }
        let r = client.expand(shard, &frontier, &filter, 0).await?;
        rpcs += 1;
        let mut next = Vec::new();
        for list in r.lists {
            let Some(from) = list.id.as_ref().map(id_from_pb) else {
                continue;
            };
            for e in list.edges {
                let Some(to) = e.other.as_ref().map(id_from_pb) else {
                    continue;
                };
                if seen.insert(to) {
                    parent.insert(to, (from, e.relation, e.outgoing, e.confidence));
                    next.push(to);
                }
            }
        }
        frontier = next;
    }
    if !seen.contains(&end) {
        return Ok((None, rpcs));
    }
    let mut chain = vec![end];
    while let Some((p, ..)) = parent.get(chain.last().unwrap_or(&start)) {
        chain.push(*p);
    }
    chain.reverse();
    let names = labels(client, shard, &chain).await?;
    let mut out = label_of(&names, start);
    let mut conf = 1.0f64;
    for v in &chain[1..] {
        let (_, rel, outgoing, c) = &parent[v];
        conf *= *c as f64;
        let arrow = if *outgoing { format!(" --{rel}--> ") } else { format!(" <--{rel}-- ") };
        out.push_str(&arrow);
        out.push_str(&label_of(&names, *v));
    }
    out.push_str(&format!("   [confidence {conf:.3}]"));
    Ok((Some((out, chain.len() - 1)), rpcs))
}

async fn print_concept(client: &StorageClient, shard: u32, id: ConceptId, format: &str) -> Result<()> {
    let r = client.get_concepts(shard, &[id]).await?;
    let Some(c) = r.found.into_iter().next() else { bail!("no concept {id} on shard {shard}") };
    if format == "json" {
        println!(
            "{}",
            serde_json::json!({"id": id.to_string(), "label": c.label, "content": c.content,
            "confidence": c.confidence, "created_ms": c.created_ms, "updated_ms": c.updated_ms, "vector_dim": c.vector.len()})
        );
    } else {
        println!(
            "  {}  {}\n  {}\n  confidence {:.2}",
            c.label,
            id,
            if c.content.is_empty() { "(no content)" } else { &c.content },
            c.confidence
        );
    }
    Ok(())
}

async fn print_neighbors(client: &StorageClient, shard: u32, id: ConceptId, limit: u32, format: &str) -> Result<()> {
    let r = client.neighbors(shard, &[id], &EdgeFilter::default(), limit, true).await?;
    let list: pb::NeighborList = r.lists.into_iter().next().unwrap_or_default();
    if list.missing {
        bail!("no concept {id} on shard {shard}");
    }
    let others: Vec<ConceptId> = list.edges.iter().filter_map(|e| e.other.as_ref().map(id_from_pb)).collect();
    let names = labels(client, shard, &others).await?;
    if format == "json" {
        let edges: Vec<_> = list
            .edges
            .iter()
            .map(|e| {
                let other = e.other.as_ref().map(id_from_pb).unwrap_or_default();
                serde_json::json!({"other": other.to_string(), "label": label_of(&names, other),
                "kind": kind_from_pb(e.kind).map(|k| k.name()), "relation": e.relation,
                "confidence": e.confidence, "direction": if e.outgoing {"out"} else {"in"}, "evidence": e.evidence})
            })
            .collect();
        println!("{}", serde_json::json!({"id": id.to_string(), "edges": edges, "truncated": list.truncated}));
        return Ok(());
    }
    for e in &list.edges {
        let other = e.other.as_ref().map(id_from_pb).unwrap_or_default();
        let kind = kind_from_pb(e.kind).map(|k| k.name()).unwrap_or("?");
        let arrow = if e.outgoing { "-->" } else { "<--" };
        println!("  {arrow} {:<22} {:<14} {:<13} {:.2}", label_of(&names, other), e.relation, kind, e.confidence);
    }
    if list.truncated {
        println!("  (more; raise --limit)");
    }
    Ok(())
}

pub async fn concept(a: QueryArgs) -> Result<()> {
    let client = StorageClient::connect(&a.node).await?;
    print_concept(&client, a.shard, resolve(&a.concept), &a.format).await
}

pub async fn neighbors(a: QueryArgs) -> Result<()> {
    let client = StorageClient::connect(&a.node).await?;
    print_neighbors(&client, a.shard, resolve(&a.concept), a.limit, &a.format).await
}
