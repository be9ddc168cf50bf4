//! The cluster section (PostgreSQL only): nodes are separate processes of this binary sharing
//! one schema, like orch on several machines sharing one PostgreSQL — here on one machine,
//! where they share its CPUs with PostgreSQL.
//!
//! - throughput of the same W(5) batch on 1 node and spread over 3 nodes, with the CPU time
//!   each node and the PostgreSQL server processes spent per step;
//! - takeover: a node is killed with SIGKILL while it drives slow workflows; how long until a
//!   surviving node owns them and until they have all finished there;
//! - idle: transactions/s an idle node and an idle 3-node cluster cause (heartbeats only; no
//!   polling), counted by PostgreSQL in a database of the bench's own.

use super::*;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout};

/// One step of a slow workflow: a pause of `ms`.
#[step]
async fn pause(ms: u64) -> Result<u64, StepError> {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Ok(ms)
}

/// `n` pauses of 50 ms: long enough in flight to be taken over.
#[workflow]
async fn slow(n: u32) -> Result<u32, StepError> {
    for _ in 0..n {
        pause(50).await?;
    }
    Ok(n)
}

/// CPU time (user + system) of process `pid` ("self" for this one), in ms.
pub(super) fn cpu_ms(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command (which may hold spaces) in parentheses.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after the command. 100 Hz.
    (ticks(11) + ticks(12)) * 10.0
}

/// CPU time of every PostgreSQL server process on this machine, in ms.
fn postgres_cpu_ms() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .map(|pid| cpu_ms(&pid))
        .sum()
}

fn epoch_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// `url` with its database replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let base = match base[after_scheme..].find('/') {
        Some(slash) => &base[..after_scheme + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

// ---------------------------------------------------------------------------------------------
// A node: `__child node <url> <schema> <id> <lease ms>`, driven by lines on stdin.

/// Runs one node until stdin says `quit` (or closes). Commands:
/// `go N` (a round of N W(5), answers a `node_round` row and `@@DONE`), `slow N` (starts N
/// `slow(20)` as `victim-K`, answers `@@STARTED`), `watch KILLED_AT N` (waits until this node
/// owns some of the victims and until all N finished, answers a `takeover` row).
pub(super) async fn child_node(url: &str, schema: &str, id: &str, lease_ms: u64) {
    let store = PostgresStore::open(url, super::pg_options(schema.to_string()))
        .await
        .unwrap_or_else(|e| fail(&format!("node {id}: opening the PostgreSQL store: {e}")));
    let store = Arc::new(store);
    let rt = Runtime::builder()
        .store(store.clone() as Arc<dyn StoreBackend>)
        .node_id(id)
        .lease_ttl(Duration::from_millis(lease_ms))
        .build()
        .await
        .unwrap_or_else(|e| fail(&format!("node {id}: building the runtime: {e}")));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    say("@@READY");
    while let Some(line) = rx.recv().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| -> u64 {
            words
                .get(i)
                .and_then(|w| w.parse().ok())
                .unwrap_or_else(|| fail(&format!("node {id}: bad command `{line}`")))
        };
        match words.first().copied() {
            Some("go") => {
                let n = num(1) as usize;
                let (cpu0, c0) = (cpu_ms("self"), store.commits());
                let wall = one_round(&rt, n).await;
                emit(json!({
                    "kind": "node_round", "node": id, "wfs": n, "wall_ms": ms(wall),
                    "cpu_ms": cpu_ms("self") - cpu0, "commits": store.commits() - c0,
                }));
                say("@@DONE");
            }
            Some("slow") => {
                for k in 0..num(1) {
                    rt.start_with_id(Slow, &format!("victim-{k}"), 20)
                        .await
                        .unwrap_or_else(|e| fail(&format!("node {id}: starting victim-{k}: {e}")));
                }
                say("@@STARTED");
            }
            Some("watch") => {
                let (killed_at, n) = (num(1) as u128, num(2));
                let mut waits = JoinSet::new();
                for k in 0..n {
                    let rt = rt.clone();
                    waits.spawn(async move {
                        let run = rt.handle(Slow, &format!("victim-{k}")).await?;
                        run.result().await
                    });
                }
                let mut first = None;
                let mut done = 0;
                while done < n {
                    tokio::select! {
                        r = waits.join_next() => {
                            let r = r.expect("a wait per victim").expect("joining a wait");
                            assert_eq!(r.expect("a victim's result"), Ok(20));
                            done += 1;
                        }
                        () = tokio::time::sleep(Duration::from_millis(2)), if first.is_none() => {
                            let owned = rt.nodes().await.expect("listing nodes")
                                .into_iter().find(|n| n.id == id).map_or(0, |n| n.owned);
                            if owned > 0 { first = Some(epoch_ms()); }
                        }
                    }
                }
                let all = epoch_ms();
                let first = first.unwrap_or(all);
                emit(json!({
                    "kind": "takeover", "lease_ms": lease_ms, "victims": n,
                    "first_owned_ms": first.saturating_sub(killed_at) as f64,
                    "all_finished_ms": all.saturating_sub(killed_at) as f64,
                }));
                say("@@DONE");
            }
            Some("quit") | None => break,
            Some(other) => fail(&format!("node {id}: unknown command `{other}`")),
        }
    }
    rt.shutdown().await.expect("shutdown");
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

// ---------------------------------------------------------------------------------------------
// The parent's side.

struct Node {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    rows: Vec<Value>,
}

impl Node {
    fn spawn(url: &str, schema: &str, id: &str, lease_ms: u64) -> Node {
        let exe = std::env::current_exe().expect("locating the bench binary");
        let mut child = Command::new(exe)
            .args(["__child", "node", url, schema, id, &lease_ms.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting a node");
        let stdin = child.stdin.take().expect("node stdin");
        let stdout = BufReader::new(child.stdout.take().expect("node stdout"));
        let mut node = Node {
            child,
            stdin,
            stdout,
            rows: Vec::new(),
        };
        node.expect("@@READY");
        node
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("writing to a node");
        self.stdin.flush().expect("writing to a node");
    }

    /// Reads lines until `marker`, keeping the rows.
    fn expect(&mut self, marker: &str) {
        let mut line = String::new();
        loop {
            line.clear();
            if self.stdout.read_line(&mut line).expect("reading a node") == 0 {
                fail(&format!("a node ended before `{marker}`"));
            }
            let l = line.trim_end();
            if l == marker {
                return;
            }
            if let Some(row) = l.strip_prefix("@@ROW ") {
                self.rows
                    .push(serde_json::from_str(row).expect("parsing a node row"));
            }
        }
    }

    fn quit(mut self) {
        self.send("quit");
        let _ = self.child.wait();
    }
}

async fn reset_schema(url: &str, schema: &str) {
    pg_client(url)
        .await
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .expect("dropping a bench schema");
}

/// Throughput: the same `total` W(5) on `nodes` nodes (split evenly), one round at a time.
async fn cluster_round(o: &Opts, url: &str, nodes: usize, total: usize) -> Value {
    let schema = format!("{}_n{nodes}", bench_schema());
    reset_schema(url, &schema).await;
    let mut ns: Vec<Node> = (0..nodes)
        .map(|k| Node::spawn(url, &schema, &format!("node-{k}"), 10_000))
        .collect();
    let share = total / nodes;
    // A warm-up round, then the measured ones.
    for n in &mut ns {
        n.send(&format!("go {}", share.min(300)));
    }
    for n in &mut ns {
        n.expect("@@DONE");
    }
    let mut walls = Vec::new();
    let mut node_cpu = 0.0;
    let mut pg_cpu = 0.0;
    for _ in 0..o.rounds() {
        for n in &mut ns {
            n.rows.clear();
        }
        let pg0 = postgres_cpu_ms();
        let t = Instant::now();
        for n in &mut ns {
            n.send(&format!("go {share}"));
        }
        for n in &mut ns {
            n.expect("@@DONE");
        }
        walls.push(t.elapsed());
        pg_cpu += postgres_cpu_ms() - pg0;
        node_cpu += ns
            .iter()
            .flat_map(|n| &n.rows)
            .map(|r| f(r, "cpu_ms"))
            .sum::<f64>();
    }
    for n in ns {
        n.quit();
    }
    reset_schema(url, &schema).await;
    let rounds = walls.len() as f64;
    walls.sort();
    let wall = walls[walls.len() / 2];
    let steps = (share * nodes * 5) as f64;
    json!({
        "kind": "cluster", "nodes": nodes, "wfs": share * nodes, "rounds": walls.len(),
        "wall_ms": ms(wall), "steps_s": steps / wall.as_secs_f64(),
        "node_cpu_us_per_step": node_cpu * 1e3 / (steps * rounds),
        "pg_cpu_us_per_step": pg_cpu * 1e3 / (steps * rounds),
    })
}

/// Takeover: node-0 drives `victims` slow workflows and is killed; node-1 takes them over.
async fn takeover(url: &str, lease_ms: u64, victims: u64) -> Value {
    let schema = format!("{}_takeover", bench_schema());
    reset_schema(url, &schema).await;
    let mut victim = Node::spawn(url, &schema, "victim", lease_ms);
    let mut survivor = Node::spawn(url, &schema, "survivor", lease_ms);
    victim.send(&format!("slow {victims}"));
    victim.expect("@@STARTED");
    // Mid-flight: every victim is at one of its 20 steps of 50 ms.
    let _ = victim.child.kill(); // SIGKILL
    let killed_at = epoch_ms();
    let _ = victim.child.wait();
    survivor.send(&format!("watch {killed_at} {victims}"));
    survivor.expect("@@DONE");
    let row = survivor.rows.pop().unwrap_or(Value::Null);
    survivor.quit();
    reset_schema(url, &schema).await;
    row
}

/// Transactions per second PostgreSQL counted in a database of its own while `nodes` idle
/// nodes were connected, over `secs`.
async fn idle(url: &str, nodes: usize, secs: u64) -> Value {
    let db = format!("{}_idle", bench_schema());
    let admin = pg_client(url).await;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db}"))
        .await
        .expect("dropping the idle database");
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .expect("creating the idle database");
    let db_url = with_database(url, &db);
    let ns: Vec<Node> = (0..nodes)
        .map(|k| Node::spawn(&db_url, "orch", &format!("idle-{k}"), 10_000))
        .collect();
    let xacts = || async {
        // A fresh connection per reading: its own stats snapshot.
        let c = pg_client(url).await;
        let row = c
            .query_one(
                "SELECT (xact_commit + xact_rollback)::float8 FROM pg_stat_database WHERE datname = $1",
                &[&db],
            )
            .await
            .expect("reading pg_stat_database");
        row.get::<_, f64>(0)
    };
    // Let start-up settle and its statistics reach the server (idle backends report them
    // within 10 s at most), then count over the window.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let x0 = xacts().await;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let x1 = xacts().await;
    for n in ns {
        n.quit();
    }
    // Connections must be gone before the database can be dropped.
    for _ in 0..50 {
        if admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {db}"))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    json!({
        "kind": "idle", "nodes": nodes, "secs": secs,
        "xact_s": (x1 - x0) / secs as f64,
    })
}

/// The cluster section's rows.
pub(super) fn run(o: &Opts) -> Vec<Value> {
    let url = o
        .postgres
        .clone()
        .unwrap_or_else(|| fail("the cluster section needs --postgres URL"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    rt.block_on(async {
        let total = o.concurrent();
        let mut rows = Vec::new();
        eprintln!("running cluster throughput on 1 node …");
        rows.push(cluster_round(o, &url, 1, total).await);
        eprintln!("running cluster throughput on 3 nodes …");
        rows.push(cluster_round(o, &url, 3, total).await);
        for lease_ms in [1_000u64, 10_000] {
            eprintln!("running takeover with a {lease_ms} ms lease …");
            rows.push(takeover(&url, lease_ms, 200).await);
        }
        let secs = if o.quick { 10 } else { 30 };
        for nodes in [1usize, 3] {
            eprintln!("running idle with {nodes} node(s) for {secs} s …");
            rows.push(idle(&url, nodes, secs).await);
        }
        rows
    })
}

/// Prints the cluster rows; adds the targets.
pub(super) fn print(rows: &[Value], checks: &mut Vec<(String, bool)>) {
    println!();
    println!(
        "== Cluster on PostgreSQL: nodes are processes sharing one schema (and this machine's \
         CPUs with PostgreSQL) =="
    );
    println!(
        "{:<8} {:>6} {:>6} {:>10} {:>10} {:>18} {:>16}",
        "nodes", "wfs", "rounds", "wall ms", "steps/s", "node CPU µs/step", "PG CPU µs/step"
    );
    for r in rows.iter().filter(|r| r["kind"] == "cluster") {
        println!(
            "{:<8} {:>6} {:>6} {:>10.1} {:>10.0} {:>18.1} {:>16.1}",
            r["nodes"].as_u64().unwrap_or(0),
            r["wfs"].as_u64().unwrap_or(0),
            r["rounds"].as_u64().unwrap_or(0),
            f(r, "wall_ms"),
            f(r, "steps_s"),
            f(r, "node_cpu_us_per_step"),
            f(r, "pg_cpu_us_per_step"),
        );
    }
    let steps = |n: u64| {
        rows.iter()
            .find(|r| r["kind"] == "cluster" && r["nodes"] == n)
            .map(|r| f(r, "steps_s"))
    };
    if let (Some(one), Some(three)) = (steps(1), steps(3)) {
        println!("  3 nodes / 1 node: {:.2}x", three / one);
        checks.push((
            format!(
                "3 nodes together at least as fast as 1 on PostgreSQL: {three:.0} vs {one:.0} \
                 steps/s = {:.2}x",
                three / one
            ),
            three >= one,
        ));
    }
    println!("  CPU per step: all nodes' CPU (user+system) and all PostgreSQL server processes'");
    for r in rows.iter().filter(|r| r["kind"] == "takeover") {
        let lease = f(r, "lease_ms");
        let first = f(r, "first_owned_ms");
        println!(
            "takeover ({} slow workflows in flight, node killed with SIGKILL, lease {:.0} ms): \
             survivor owns them after {:.0} ms ({:.2}x the lease), all finished after {:.0} ms",
            r["victims"].as_u64().unwrap_or(0),
            lease,
            first,
            first / lease,
            f(r, "all_finished_ms"),
        );
    }
    for r in rows.iter().filter(|r| r["kind"] == "idle") {
        let nodes = r["nodes"].as_u64().unwrap_or(0);
        // A heartbeat every third of the default 10 s lease, per node.
        let heartbeats = nodes as f64 * 0.3;
        let x = f(r, "xact_s");
        println!(
            "idle: {nodes} node(s), default 10 s lease: {x:.2} transactions/s over {} s \
             (heartbeats alone: {heartbeats:.2}/s)",
            r["secs"].as_u64().unwrap_or(0),
        );
        checks.push((
            format!(
                "an idle cluster of {nodes} sends little beyond its heartbeats: {x:.2} \
                 transactions/s ≤ 2 × {heartbeats:.2}"
            ),
            x <= 2.0 * heartbeats,
        ));
    }
}
