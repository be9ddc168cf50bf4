//! Several checkout nodes share one store and one set of services (the example's
//! `--services-only` and `--services`), and a batch of orders survives losing one of them:
//!
//! - a node killed with `kill -9` mid-batch has its in-flight orders taken over by the others
//!   once its lease has run out; every order ends final and no service effect is applied twice;
//! - a node stopped (`SIGSTOP`) past its lease loses its orders to the others; continued
//!   (`SIGCONT`), it finds its late writes refused and drops those orders, and nothing it
//!   wrote after losing the lease is visible in the store. On PostgreSQL also when it was
//!   stopped in the middle of a write transaction, holding its orders' rows locked.
//!
//! Each runs on PostgreSQL with three nodes (a schema of its own; skipped with a notice unless
//! `ORCH_TEST_DATABASE_URL` is set, see tests/support/backends.rs) and on one SQLite file with
//! two. The processes are the checkout example's binary; the test waits for states (owners in
//! the store, lines in the service log), never for a fixed time.
#![allow(clippy::unwrap_used)]

#[path = "support/backends.rs"]
mod backends;
mod support;
#[path = "support/wait.rs"]
mod wait;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::example_binary;
use wait::wait_until;

/// Orders in a batch: `order-1` … (every seventh card is declined).
const ORDERS: u64 = 24;
/// Orders each node drives at once: small, so every node gets a share of the batch.
const CONCURRENCY: usize = 3;
/// Every service call takes this long, so the batch is still running when a node is lost.
const STEP_DELAY_MS: u64 = 80;
/// The nodes' lease: a lost node's orders are taken over this long after its last heartbeat.
const LEASE_MS: u64 = 1500;

/// Where the nodes keep their state.
#[derive(Clone, Copy, Debug)]
enum Backend {
    /// One schema of `ORCH_TEST_DATABASE_URL`, three nodes.
    Postgres,
    /// One SQLite file, two nodes.
    Sqlite,
}

impl Backend {
    fn nodes(self) -> usize {
        match self {
            Backend::Postgres => 3,
            Backend::Sqlite => 2,
        }
    }
}

/// A child process of the test, killed when dropped (continued first, if stopped).
struct Proc {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Proc {
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {} failed", self.name);
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits for a clean exit, failing with its output otherwise.
    async fn exits_cleanly(&mut self) {
        let status = wait_until(&format!("{} to exit", self.name), || {
            let polled = self.child.try_wait().expect("poll child");
            let said = polled.is_none().then(|| self.stderr());
            async move { polled.ok_or(said) }
        })
        .await;
        assert!(
            status.success(),
            "{} failed ({status:?}):\n{}\n{}",
            self.name,
            self.stdout(),
            self.stderr()
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The store as the test reads it, beside the nodes.
enum Db {
    Postgres {
        client: tokio_postgres::Client,
        schema: backends::PgSchema,
    },
    Sqlite(PathBuf),
}

/// Statuses an instance ends in.
const FINAL: &str = "('completed', 'failed', 'cancelled', 'terminated', 'incompatible')";

impl Db {
    /// Rows of `sql`, each as one text (`{p}` stands for the tables' schema prefix).
    async fn rows(&self, sql: &str) -> Vec<String> {
        match self {
            Db::Postgres { client, schema } => {
                let sql = sql
                    .replace("{p}", &format!("{}.", schema.name))
                    .replace("{epoch}", "lease_epoch");
                let rows = match client.query(&sql, &[]).await {
                    Ok(rows) => rows,
                    // No node has created the schema yet.
                    Err(e)
                        if e.code().is_some_and(|c| {
                            *c == tokio_postgres::error::SqlState::UNDEFINED_TABLE
                        }) =>
                    {
                        return Vec::new();
                    }
                    Err(e) => panic!("{sql}: {e}"),
                };
                rows.iter()
                    .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
                    .collect()
            }
            Db::Sqlite(path) => {
                let sql = sql.replace("{p}", "").replace("{epoch}", "epoch");
                if !path.exists() {
                    return Vec::new(); // no node has created it yet
                }
                let conn = rusqlite::Connection::open_with_flags(
                    path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )
                .expect("read-only connection");
                conn.busy_timeout(Duration::from_secs(10)).expect("timeout");
                let mut stmt = match conn.prepare(&sql) {
                    Ok(stmt) => stmt,
                    // No node has created (or finished migrating) the schema yet.
                    Err(e) if e.to_string().contains("no such") => return Vec::new(),
                    Err(e) => panic!("{sql}: {e}"),
                };
                stmt.query_map([], |r| r.get::<_, Option<String>>(0))
                    .expect("query")
                    .map(|r| r.expect("row").unwrap_or_default())
                    .collect()
            }
        }
    }

    /// The unfinished instances `node` owns.
    async fn owned_by(&self, node: &str) -> BTreeSet<String> {
        self.rows(&format!(
            "SELECT id FROM {{p}}instances WHERE owner = '{node}' AND status NOT IN {FINAL}"
        ))
        .await
        .into_iter()
        .collect()
    }

    /// The sessions of process `pid` in the test database (PostgreSQL only), as (state,
    /// whether its transaction holds locks), told apart by the client ports of the process's
    /// TCP sockets.
    async fn sessions_of(&self, pid: u32) -> Vec<(String, bool)> {
        let Db::Postgres { client, .. } = self else {
            return Vec::new();
        };
        let ports: Vec<i32> = tcp_ports(pid).into_iter().map(i32::from).collect();
        client
            .query(
                "SELECT coalesce(state, ''), backend_xid IS NOT NULL FROM pg_stat_activity \
                 WHERE client_port = ANY($1) AND datname = current_database()",
                &[&ports],
            )
            .await
            .expect("pg_stat_activity")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    /// Each instance's owner (`""` for none), by id.
    async fn owners(&self) -> BTreeMap<String, String> {
        self.rows("SELECT concat_ws('|', id, coalesce(owner, '')) FROM {p}instances")
            .await
            .into_iter()
            .filter_map(|r| {
                r.split_once('|')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
            })
            .collect()
    }

    async fn unfinished(&self) -> usize {
        self.rows(&format!(
            "SELECT id FROM {{p}}instances WHERE status NOT IN {FINAL}"
        ))
        .await
        .len()
            + (ORDERS as usize).saturating_sub(self.rows("SELECT id FROM {p}instances").await.len())
    }

    /// Everything the engine writes about instances: records, journals, failed attempts,
    /// attributes (the nodes' heartbeats left out).
    async fn snapshot(&self) -> Vec<String> {
        let mut all = Vec::new();
        for sql in [
            "SELECT concat_ws('|', 'instance', id, status, output, error, custom_status, \
             updated_at, wake_at, owner, {epoch}, failed_step, retries) FROM {p}instances \
             ORDER BY id",
            "SELECT concat_ws('|', 'journal', instance, seq, kind, name, outcome, attempts, \
             started_at, finished_at) FROM {p}journal ORDER BY instance, seq",
            "SELECT concat_ws('|', 'attempt', instance, seq, attempt, error, started_at, \
             finished_at) FROM {p}attempts ORDER BY instance, seq, attempt",
            "SELECT concat_ws('|', 'attribute', instance, key, value) FROM {p}attributes \
             ORDER BY instance, key",
        ] {
            all.extend(self.rows(sql).await);
        }
        all
    }
}

/// Services, nodes and the store of one test (dropped in this order: the processes first).
struct Cluster {
    /// Each node's process, by name (`n1`, `n2`, …), until it is lost.
    nodes: BTreeMap<String, Proc>,
    services: Proc,
    value: String,
    db: Db,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// The services process and the store, no node yet; `None` when PostgreSQL is not
    /// configured (after the notice).
    async fn new(backend: Backend) -> Option<Cluster> {
        let dir = tempfile::tempdir().unwrap();
        let db = match backend {
            Backend::Postgres => {
                let schema = backends::PgSchema::new()?;
                let (client, conn) = tokio_postgres::connect(&schema.url, tokio_postgres::NoTls)
                    .await
                    .expect("connect to the test database");
                tokio::spawn(conn);
                Db::Postgres { client, schema }
            }
            Backend::Sqlite => Db::Sqlite(dir.path().join("orch.db")),
        };
        let log = dir.path().join("services.log");
        let services = spawn(
            dir.path(),
            "services",
            Command::new(example_binary())
                .arg("--services-only")
                .arg("--service-log")
                .arg(&log)
                .args(["--step-delay-ms", &STEP_DELAY_MS.to_string()]),
        );
        let value = wait_until("the services' line", || {
            let out = services.stdout();
            async move {
                match out.lines().next() {
                    Some(line) if out.contains('\n') => line
                        .strip_prefix("services: ")
                        .map(str::to_string)
                        .ok_or(out.clone()),
                    _ => Err(out.clone()),
                }
            }
        })
        .await;
        Some(Cluster {
            nodes: BTreeMap::new(),
            services,
            value,
            db,
            log,
            dir,
        })
    }

    /// Starts node `name` on the batch.
    fn start_node(&mut self, name: &str) {
        let mut cmd = Command::new(example_binary());
        cmd.args([
            "--orders",
            &ORDERS.to_string(),
            "--json",
            "--no-http",
            "--concurrency",
            &CONCURRENCY.to_string(),
            "--lease-ms",
            &LEASE_MS.to_string(),
            "--node",
            name,
            "--services",
            &self.value,
        ]);
        match &self.db {
            Db::Postgres { schema, .. } => {
                cmd.args(["--postgres", &schema.url, "--schema", &schema.name]);
            }
            Db::Sqlite(path) => {
                cmd.arg("--db").arg(path);
            }
        }
        let node = spawn(self.dir.path(), name, &mut cmd);
        self.nodes.insert(name.to_string(), node);
    }

    /// The service log's whole lines.
    fn log(&self) -> Vec<Value> {
        read_log(&self.log)
    }

    /// Everything the processes said, for failure messages.
    fn output(&self) -> String {
        let mut all = format!("--- services:\n{}", self.services.stderr());
        for (name, node) in &self.nodes {
            all.push_str(&format!(
                "\n--- {name}:\n{}{}",
                node.stdout(),
                node.stderr()
            ));
        }
        all
    }

    /// Starts the node to be lost first, so that it surely owns orders when the others join,
    /// and waits until it has started the whole batch (its later writes are the drives').
    async fn start_victim(&mut self, name: &str) {
        self.start_node(name);
        wait_until("the first node to start the batch", || async {
            match self.db.rows("SELECT id FROM {p}instances").await.len() {
                n if n == ORDERS as usize => Ok(()),
                n => Err(n),
            }
        })
        .await;
        self.wait_in_flight(name).await;
    }

    /// Waits until `node` drives (owns, unfinished) an order for which the service log holds
    /// a request `node` sent: its work is under way. Returns those orders.
    async fn wait_in_flight(&self, node: &str) -> BTreeSet<String> {
        wait_until(&format!("{node} to have orders in flight"), || async {
            let owned = self.db.owned_by(node).await;
            let called: BTreeSet<String> = self
                .log()
                .iter()
                .filter(|e| e["node"] == node)
                .filter_map(|e| e["order"].as_str().map(str::to_string))
                .collect();
            let in_flight: BTreeSet<String> = owned.intersection(&called).cloned().collect();
            if in_flight.is_empty() {
                Err(format!("owns {owned:?}; called for {called:?}"))
            } else {
                Ok(in_flight)
            }
        })
        .await
    }

    /// Stops `node` (SIGSTOP). On SQLite, not in the middle of a write: a process stopped
    /// while it holds the file's write lock keeps every other process from writing until it
    /// continues (SQLite's limit, not orch's), so the test continues it and tries again.
    async fn stop_outside_a_write(&self, node: &str) {
        let proc = &self.nodes[node];
        let Db::Sqlite(path) = &self.db else {
            proc.signal("-STOP");
            return;
        };
        wait_until(&format!("{node} stopped outside a write"), || async {
            proc.signal("-STOP");
            let conn = rusqlite::Connection::open(path).expect("connection");
            conn.busy_timeout(Duration::from_millis(500))
                .expect("timeout");
            match conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK") {
                Ok(()) => Ok(()),
                Err(e) => {
                    proc.signal("-CONT");
                    Err(e.to_string())
                }
            }
        })
        .await;
    }

    /// Stops `node` (SIGSTOP) in the middle of a write transaction on PostgreSQL, holding row
    /// locks: its session idles in the transaction until the server ends it.
    async fn stop_in_a_write_transaction(&self, node: &str) {
        // Most writes are one autocommit statement; an instance's end is a transaction that
        // holds its row locked for a millisecond or two. A trigger of this test's schema makes
        // each end take 50 ms in the server, so the node is caught inside one every time.
        if let Db::Postgres { client, schema } = &self.db {
            let s = &schema.name;
            client
                .batch_execute(&format!(
                    "CREATE FUNCTION {s}.slow_end() RETURNS trigger LANGUAGE plpgsql AS \
                     $$ BEGIN PERFORM pg_sleep(0.05); RETURN NEW; END $$; \
                     CREATE TRIGGER slow_end BEFORE UPDATE ON {s}.instances FOR EACH ROW \
                     WHEN (NEW.status IN ('completed', 'failed', 'cancelled')) \
                     EXECUTE FUNCTION {s}.slow_end()"
                ))
                .await
                .expect("creating the test's slow-end trigger");
        }
        let proc = &self.nodes[node];
        let pid = proc.child.id();
        wait_until(
            &format!("{node} stopped in a write transaction"),
            || async {
                // Catch it in a transaction that holds locks (has a transaction id)…
                let mut now = Vec::new();
                for _ in 0..1000 {
                    now = self.db.sessions_of(pid).await;
                    if now.iter().any(|(_, locks)| *locks) {
                        break;
                    }
                }
                if !now.iter().any(|(_, locks)| *locks) {
                    return Err(format!("not in a write transaction: {now:?}"));
                }
                proc.signal("-STOP");
                // …and let the server finish what it was sent: the session idles, in the
                // transaction or after it.
                let settled = wait_until("the stopped node's sessions to settle", || async {
                    let s = self.db.sessions_of(pid).await;
                    if s.iter().any(|(state, _)| state == "active") {
                        Err(s)
                    } else {
                        Ok(s)
                    }
                })
                .await;
                if settled
                    .iter()
                    .any(|(state, locks)| state == "idle in transaction" && *locks)
                {
                    Ok(())
                } else {
                    proc.signal("-CONT");
                    Err(format!("stopped after its transaction: {settled:?}"))
                }
            },
        )
        .await;
    }

    /// The nodes other than `lost`, waited for until each has printed its summary and exited
    /// cleanly; returns each one's summary.
    async fn survivors_finish(&mut self, lost: &str) -> Vec<Value> {
        let mut summaries = Vec::new();
        let output = self.output();
        for (name, node) in self.nodes.iter_mut().filter(|(n, _)| *n != lost) {
            node.exits_cleanly().await;
            summaries.push(summary(name, &node.stdout(), &output));
        }
        summaries
    }
}

fn spawn(dir: &Path, name: &str, cmd: &mut Command) -> Proc {
    let stdout = dir.join(format!("{name}.out"));
    let stderr = dir.join(format!("{name}.err"));
    let child = cmd
        .env("RUST_LOG", "warn")
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    Proc {
        name: name.to_string(),
        child,
        stdout,
        stderr,
    }
}

/// The local ports of the TCP sockets process `pid` has open (from Linux's `/proc`).
fn tcp_ports(pid: u32) -> BTreeSet<u16> {
    let inodes: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
                .filter_map(|target| {
                    let target = target.to_string_lossy();
                    let inode = target.strip_prefix("socket:[")?.strip_suffix(']')?;
                    Some(inode.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let mut ports = BTreeSet::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(inode)) = (fields.get(1), fields.get(9)) else {
                continue;
            };
            if inodes.contains(*inode)
                && let Some(port) = local
                    .rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            {
                ports.insert(port);
            }
        }
    }
    ports
}

/// The whole lines of a service log.
fn read_log(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let whole = text.rfind('\n').map_or("", |end| &text[..end]);
    whole
        .lines()
        .map(|l| serde_json::from_str(l).expect("every log line is whole JSON"))
        .collect()
}

/// A node's `--json` summary, checked: every order of the batch final, the declined cards'
/// orders failed and the others completed.
fn summary(node: &str, stdout: &str, output: &str) -> Value {
    let mut lines = stdout.lines();
    let summary: Value = lines
        .next()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("{node} printed no summary:\n{output}"));
    assert_eq!(lines.next(), None, "{node}: --json prints one line");
    let orders = summary["orders"].as_object().expect("orders");
    assert_eq!(orders.len(), ORDERS as usize, "{node}: {summary}");
    for n in 1..=ORDERS {
        let want = if n.is_multiple_of(7) {
            "failed"
        } else {
            "completed"
        };
        assert_eq!(orders[&format!("order-{n}")], want, "{node}: order-{n}");
    }
    summary
}

/// Every service effect was applied once: no idempotency key twice, and per order exactly
/// the effects the business rules call for.
fn assert_effects_once(log: &[Value]) {
    let mut per_key: HashMap<(&str, &str), usize> = HashMap::new();
    let mut per_op: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    for e in log.iter().filter(|e| e["applied"] == true) {
        let service = e["service"].as_str().unwrap();
        *per_key
            .entry((service, e["key"].as_str().unwrap()))
            .or_default() += 1;
        let op = (
            service.to_string(),
            e["order"].as_str().unwrap().to_string(),
            e["op"].as_str().unwrap().to_string(),
        );
        *per_op.entry(op).or_default() += 1;
    }
    for (key, n) in &per_key {
        assert_eq!(*n, 1, "{key:?} applied {n} times");
    }
    let count = |service: &str, order: &str, op: &str| {
        per_op
            .get(&(service.into(), order.into(), op.into()))
            .copied()
            .unwrap_or(0)
    };
    for n in 1..=ORDERS {
        let id = format!("order-{n}");
        let declined = usize::from(n.is_multiple_of(7));
        let paid = 1 - declined;
        for (service, op, want) in [
            ("orders", "create", 1),
            ("inventory", "reserve", 1),
            ("payment", "charge", paid),
            ("payment", "decline", declined),
            ("inventory", "release", declined),
            ("shipping", "ship", paid),
        ] {
            assert_eq!(count(service, &id, op), want, "{id}: {service} {op}");
        }
        assert!(count("analytics", &id, "event") <= 1, "{id}: analytics");
    }
}

/// Requests each node sent, as the service log tells.
fn requests_by_node(log: &[Value]) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for e in log {
        *by.entry(e["node"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    by
}

/// Node names `n1` … `nN`.
fn names(backend: Backend) -> Vec<String> {
    (1..=backend.nodes()).map(|i| format!("n{i}")).collect()
}

async fn killed_node_is_taken_over(backend: Backend) {
    let Some(mut cluster) = Cluster::new(backend).await else {
        return;
    };
    let names = names(backend);
    let victim = names[0].clone();
    cluster.start_victim(&victim).await;
    for name in &names[1..] {
        cluster.start_node(name);
    }
    // Mid-batch: every node is at work, the victim too.
    for name in names.iter().rev() {
        cluster.wait_in_flight(name).await;
    }

    let node = cluster.nodes.remove(&victim).unwrap();
    node.signal("-KILL");
    let killed = Instant::now();
    let lines_at_kill = cluster.log().len();
    let orphans = cluster.db.owned_by(&victim).await;
    assert!(
        !orphans.is_empty(),
        "{victim} owned no unfinished order when killed"
    );

    // Takeover: another node claims one of the orphans, then calls a service for it.
    let claimed = wait_until(
        "another node to claim an order of the killed node",
        || async {
            let owners = cluster.db.owners().await;
            let taken = orphans.iter().any(|id| {
                owners
                    .get(id)
                    .is_some_and(|o| !o.is_empty() && *o != victim)
            });
            let finished = cluster.db.unfinished().await == 0;
            if taken || finished {
                Ok(killed.elapsed())
            } else {
                Err(owners)
            }
        },
    )
    .await;
    // Progress on one: another node calls a service for it, or (its calls all made) ends it.
    let progressed = wait_until(
        "another node to go on with a killed node's order",
        || async {
            let log = cluster.log();
            let called = log.iter().skip(lines_at_kill).any(|e| {
                e["node"] != victim.as_str()
                    && e["order"]
                        .as_str()
                        .is_some_and(|order| orphans.contains(order))
            });
            let ended = cluster
                .db
                .rows(&format!(
                    "SELECT id FROM {{p}}instances WHERE status IN {FINAL}"
                ))
                .await
                .iter()
                .any(|id| orphans.contains(id));
            if called || ended {
                Ok(killed.elapsed())
            } else {
                Err(log.len())
            }
        },
    )
    .await;

    let summaries = cluster.survivors_finish(&victim).await;
    assert!(
        summaries.windows(2).all(|w| w[0] == w[1]),
        "the survivors agree: {summaries:?}"
    );
    assert_eq!(cluster.db.unfinished().await, 0);
    let log = cluster.log();
    assert_effects_once(&log);
    drop(node);
    eprintln!(
        "{backend:?}, {} nodes, lease {LEASE_MS} ms: after kill -9 of {victim} (owning {} \
         unfinished orders), another node claimed one after {} ms and went on with it (a \
         service call, logged {} ms after it was received, or its end) after {} ms; requests by \
         node: {:?}",
        backend.nodes(),
        orphans.len(),
        claimed.as_millis(),
        STEP_DELAY_MS / 2,
        progressed.as_millis(),
        requests_by_node(&log),
    );
}

/// When the stopped node is stopped.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Pause {
    /// When it is at work (on SQLite, outside a write: see `stop_outside_a_write`).
    AtWork,
    /// In the middle of a write transaction (PostgreSQL): its session keeps row locks.
    InWriteTransaction,
}

async fn paused_node_is_fenced_out(backend: Backend, pause: Pause) {
    let Some(mut cluster) = Cluster::new(backend).await else {
        return;
    };
    let names = names(backend);
    let victim = names[0].clone();
    cluster.start_victim(&victim).await;
    for name in &names[1..] {
        cluster.start_node(name);
    }
    // Mid-batch: every node is at work, the victim too.
    for name in names.iter().rev() {
        cluster.wait_in_flight(name).await;
    }

    match pause {
        Pause::AtWork => cluster.stop_outside_a_write(&victim).await,
        Pause::InWriteTransaction => cluster.stop_in_a_write_transaction(&victim).await,
    }
    let stopped = Instant::now();
    let held = cluster.db.owned_by(&victim).await;

    // The others take the victim's orders over once its lease has run out, and finish the
    // batch while it is stopped.
    let output = cluster.output();
    wait_until("the batch to finish without the stopped node", || async {
        match cluster.db.unfinished().await {
            0 => Ok(()),
            n => Err(format!(
                "{n} unfinished; owners {:?}",
                cluster.db.owners().await
            )),
        }
    })
    .await;
    let mut summaries = cluster.survivors_finish(&victim).await;
    let paused_for = stopped.elapsed();
    let before = cluster.db.snapshot().await;
    let lines_before = cluster.log().len();

    // Continued, the victim finds it lost its orders, drops them and, seeing the batch
    // final, prints the same summary and exits.
    let node = cluster.nodes.get_mut(&victim).unwrap();
    node.signal("-CONT");
    node.exits_cleanly().await;
    summaries.push(summary(&victim, &node.stdout(), &output));
    let said = node.stderr();
    assert!(
        summaries.windows(2).all(|w| w[0] == w[1]),
        "every node prints the same summary: {summaries:?}"
    );

    // Nothing it wrote after losing the lease is visible: the store is as the others left it…
    assert_eq!(
        cluster.db.snapshot().await,
        before,
        "the stopped node changed the store after it lost its lease:\n{said}"
    );
    // …no request it sent after it continued had an effect (a step it was in the middle of
    // may still reach its service before its checkpoint is refused — a background call too —
    // but the service finds the idempotency key used and applies nothing)…
    let log = cluster.log();
    let late: Vec<&Value> = log
        .iter()
        .skip(lines_before)
        .filter(|e| e["node"] == victim.as_str() && e["applied"] == true)
        .collect();
    assert!(
        late.is_empty(),
        "{victim} applied effects after it lost its lease: {late:?}"
    );
    // …and it noticed that it lost what it held: its heartbeat or a refused write told it, or
    // (stopped in the middle of a transaction, which PostgreSQL ended) a failed write.
    let lost: Vec<&str> = said.lines().filter(|l| l.contains("lease lost")).collect();
    let noticed = said.lines().any(|l| {
        held.iter().any(|id| {
            l.contains(&format!("instance=\"{id}\"")) || l.contains(&format!("instance={id} "))
        })
    });
    assert!(
        noticed,
        "{victim} held {held:?} when stopped, yet never said it lost them:\n{said}"
    );
    assert_effects_once(&log);
    let refused = lost
        .iter()
        .filter(|l| l.contains("the write was refused"))
        .count();
    eprintln!(
        "{backend:?}, {} nodes, lease {LEASE_MS} ms: {victim} stopped ({pause:?}) for {} ms holding {} \
         unfinished orders; continued, it reported {} lost leases ({refused} of them as a \
         refused write); requests by node: {:?}",
        backend.nodes(),
        paused_for.as_millis(),
        held.len(),
        lost.len(),
        requests_by_node(&log),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_node_killed_mid_batch_is_taken_over_after_its_lease_and_no_effect_repeats() {
    killed_node_is_taken_over(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_node_killed_mid_batch_is_taken_over_after_its_lease_and_no_effect_repeats() {
    killed_node_is_taken_over(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_node_paused_past_its_lease_is_fenced_out_and_changes_nothing() {
    paused_node_is_fenced_out(Backend::Postgres, Pause::AtWork).await;
}

/// Its session keeps its orders' rows locked, which kept the others from claiming them for as
/// long as it stayed stopped; PostgreSQL now ends that transaction after a lease's time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_node_paused_in_the_middle_of_a_write_is_taken_over_all_the_same() {
    paused_node_is_fenced_out(Backend::Postgres, Pause::InWriteTransaction).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_node_paused_past_its_lease_is_fenced_out_and_changes_nothing() {
    paused_node_is_fenced_out(Backend::Sqlite, Pause::AtWork).await;
}
