//! The `orch` binary against a server: a real runtime serving HTTP in-process on an ephemeral
//! port, and a fake server for answers the contract does not allow.

use orch_runtime::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Every bounded wait in this file gives up after this long.
const PATIENCE: Duration = Duration::from_secs(60);

/// What one run of `orch` printed and how it exited.
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

/// `orch` pointed at `url` (through `ORCH_URL`), with `ORCH_TOKEN` set only when `token` is.
fn command(url: &str, token: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orch"));
    cmd.args(args).env("ORCH_URL", url).stdin(Stdio::null());
    match token {
        Some(t) => cmd.env("ORCH_TOKEN", t),
        None => cmd.env_remove("ORCH_TOKEN"),
    };
    cmd
}

/// Runs `orch` with `args` and no token (blocking: the fake-server tests call it directly).
fn orch_blocking(url: &str, args: &[&str]) -> Out {
    run(command(url, None, args))
}

fn run(mut cmd: Command) -> Out {
    let output = cmd.output().expect("run orch");
    Out {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

// ---------- a fake server: answers that break the contract ----------

/// Serves `response` (a whole HTTP response) to every connection; returns the base URL.
fn fake_server(response: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let _ = stream.write_all(response.as_bytes());
        }
    });
    format!("http://{addr}")
}

#[test]
fn a_body_that_is_not_json_is_reported_not_panicked_on() {
    let url = fake_server(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
    );
    let out = orch_blocking(&url, &["list"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("unexpected answer from the server: not JSON"),
        "{out:?}"
    );
    assert!(!out.stderr.contains("panicked"), "{out:?}");
}

#[test]
fn json_of_the_wrong_shape_is_reported_not_panicked_on() {
    let body = r#"{"instances": "nope"}"#;
    let response: &'static str = Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_boxed_str(),
    );
    let url = fake_server(response);
    for args in [&["list"][..], &["show", "x"], &["tail", "x"], &["stats"]] {
        let out = orch_blocking(&url, args);
        assert_eq!(out.code, 1, "orch {args:?}: {out:?}");
        assert!(
            out.stderr.contains("unexpected answer from the server"),
            "orch {args:?}: {out:?}"
        );
        assert!(!out.stderr.contains("panicked"), "orch {args:?}: {out:?}");
    }
}

#[test]
fn an_error_page_that_is_not_the_contract_s_error_body_is_shown_with_its_status() {
    let url = fake_server(
        "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/html\r\ncontent-length: 21\r\nconnection: close\r\n\r\n<h1>bad gateway</h1>\n",
    );
    let out = orch_blocking(&url, &["show", "order-1"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("error: the server answered 502 Bad Gateway to /api/v1/instances/order-1: <h1>bad gateway</h1>"),
        "{out:?}"
    );
}

#[test]
fn an_unreachable_server_exits_3_and_names_the_url() {
    // A port freed on 127.0.0.2: the servers of the tests running alongside listen on
    // 127.0.0.1, so none of them can take it before `orch` tries it.
    let port = TcpListener::bind("127.0.0.2:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let url = format!("http://127.0.0.2:{port}");
    let started = Instant::now();
    let out = orch_blocking(&url, &["list"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("error: cannot reach the orch server at {url}")),
        "{out:?}"
    );
    assert!(out.stderr.contains("--url or ORCH_URL"), "{out:?}");
    // Refused at once, not retried until some time-out (a bound, not a speed test).
    assert!(started.elapsed() < PATIENCE, "{out:?}");
}

#[test]
fn usage_errors_exit_2_and_say_what_is_wrong() {
    let url = "http://127.0.0.1:9";
    let out = orch_blocking(url, &["start", "checkout", "--input", "{id: 7}"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("error: --input is not valid JSON: key must be a string at line 1 column 2"),
        "{out:?}"
    );
    let out = orch_blocking(
        url,
        &["start", "checkout", "--input", "@/nonexistent/in.json"],
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("error: --input: cannot read /nonexistent/in.json"),
        "{out:?}"
    );
    let out = orch_blocking(url, &["list", "--status", "finished"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("invalid value 'finished'"), "{out:?}");
    let out = orch_blocking(url, &["list", "--attr", "items"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("expected KEY=VALUE"), "{out:?}");
    let out = orch_blocking("localhost:8080", &["list"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--url"), "{out:?}");
}

// ---------- a real server ----------

#[derive(Clone, Serialize, Deserialize, JsonSchema)]
struct Parcel {
    id: String,
    items: u64,
}

#[step]
async fn pack(parcel: &Parcel) -> Result<String, StepError> {
    Ok(format!("box-{}", parcel.id))
}

#[step]
async fn ship(label: String) -> Result<String, StepError> {
    Ok(format!("shipped {label}"))
}

/// Packs, then waits up to an hour for the signal `approve` before shipping.
#[workflow]
async fn cli_parcel(parcel: Parcel) -> Result<String, StepError> {
    orch::set_attribute("items", parcel.items).await;
    let label = pack(&parcel).await?;
    orch::set_status("waiting for approval").await;
    match orch::signal_with_timeout::<bool>("approve", secs(3600)).await {
        Some(true) => ship(label).await,
        Some(false) => Err(StepError::permanent("not approved")),
        None => Err(StepError::permanent("no approval within an hour")),
    }
}

/// Closed until `a_failed_instance_is_retried_restarted_and_forked` opens it.
static GATE_OPEN: AtomicBool = AtomicBool::new(false);

#[step]
async fn double(n: u32) -> Result<u32, StepError> {
    Ok(n * 2)
}

#[step]
async fn gate() -> Result<u32, StepError> {
    if GATE_OPEN.load(Ordering::SeqCst) {
        Ok(1)
    } else {
        Err(StepError::permanent("the gate is closed"))
    }
}

/// `2n + 1`, failing at `gate` while it is closed.
#[workflow]
async fn cli_gated(n: u32) -> Result<u32, StepError> {
    let doubled = double(n).await?;
    let one = gate().await?;
    Ok(doubled + one)
}

/// A runtime serving HTTP on an ephemeral loopback port, with no tokens.
async fn server() -> (Runtime, String) {
    let rt = Runtime::builder()
        .in_memory()
        .http("127.0.0.1:0")
        .build()
        .await
        .expect("runtime with http");
    let url = rt.http_url().expect("http url").to_string();
    (rt, url)
}

/// Runs `orch` without blocking the server's threads.
async fn orch(url: &str, args: &[&str]) -> Out {
    orch_as(url, None, args).await
}

async fn orch_as(url: &str, token: Option<&str>, args: &[&str]) -> Out {
    let cmd = command(url, token, args);
    tokio::task::spawn_blocking(move || run(cmd))
        .await
        .expect("orch thread")
}

/// Runs `orch` and checks it exits 0.
async fn ok(url: &str, args: &[&str]) -> Out {
    let out = orch(url, args).await;
    assert_eq!(out.code, 0, "orch {args:?}: {out:?}");
    out
}

/// Polls `orch show ID --json` until the instance has `status` (bounded).
async fn wait_for_status(url: &str, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let shown = ok(url, &["show", id, "--json"]).await.json();
        if shown["instance"]["status"] == status {
            return shown;
        }
        assert!(
            Instant::now() < deadline,
            "{id} did not become {status}: {shown:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running `orch tail`, read line by line (stdout and stderr) so a test can wait for one.
struct Follower {
    child: std::process::Child,
    lines: mpsc::Receiver<(bool, String)>,
    stdout: String,
    stderr: String,
    open: usize,
}

impl Follower {
    fn spawn(url: &str, args: &[&str]) -> Follower {
        let mut child = command(url, None, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn orch tail");
        let (tx, lines) = mpsc::channel();
        let out: Box<dyn Read + Send> = Box::new(child.stdout.take().expect("stdout"));
        let err: Box<dyn Read + Send> = Box::new(child.stderr.take().expect("stderr"));
        for (is_stdout, pipe) in [(true, out), (false, err)] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if tx.send((is_stdout, line)).is_err() {
                        break;
                    }
                }
            });
        }
        Follower {
            child,
            lines,
            stdout: String::new(),
            stderr: String::new(),
            open: 2,
        }
    }

    /// Reads lines until one contains `text` (bounded); false when the process ended first.
    fn wait_for(&mut self, text: &str) -> bool {
        self.read_until(Some(text))
    }

    /// Reads lines until one contains `text`, or with `None` until both pipes close (bounded).
    fn read_until(&mut self, text: Option<&str>) -> bool {
        let deadline = Instant::now() + PATIENCE;
        while self.open > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((is_stdout, line)) => {
                    let found = text.is_some_and(|t| line.contains(t));
                    let into = if is_stdout {
                        &mut self.stdout
                    } else {
                        &mut self.stderr
                    };
                    into.push_str(&line);
                    into.push('\n');
                    if found {
                        return true;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => self.open = 0,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!(
                        "orch tail did not print {text:?} (or end) in time; stdout:\n{}stderr:\n{}",
                        self.stdout, self.stderr
                    );
                }
            }
        }
        false
    }

    /// Waits (bounded) for the process to end by itself and returns its output.
    fn finish(mut self) -> Out {
        self.read_until(None);
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("orch tail did not exit; stdout:\n{}", self.stdout);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Out {
            code: status.code().unwrap_or(-1),
            stdout: self.stdout,
            stderr: self.stderr,
        }
    }

    /// Stops a tail that runs until Ctrl-C and returns what it printed.
    fn stop(mut self) -> Out {
        let _ = self.child.kill();
        let _ = self.child.wait();
        Out {
            code: -1,
            stdout: self.stdout,
            stderr: self.stderr,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_list_show_signal_and_tail_follow_an_instance_to_completion() {
    let (rt, url) = server().await;
    let input = r#"{"id": "p1", "items": 3}"#;

    let started = ok(
        &url,
        &[
            "start",
            "cli_parcel",
            "--input",
            input,
            "--id",
            "parcel-1",
            "--json",
        ],
    )
    .await
    .json();
    assert_eq!(started["id"], "parcel-1");
    assert_eq!(started["created"], true);
    let again = ok(
        &url,
        &["start", "cli_parcel", "--input", input, "--id", "parcel-1"],
    )
    .await;
    assert_eq!(
        again.stdout,
        "parcel-1 (cli_parcel) already existed: not started again\n"
    );

    let shown = wait_for_status(&url, "parcel-1", "suspended").await;
    assert_eq!(shown["instance"]["custom_status"], "waiting for approval");
    assert_eq!(shown["instance"]["attributes"]["items"], 3);
    assert_eq!(shown["instance"]["input"], json!({"id": "p1", "items": 3}));
    let pack = shown["journal"]["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["name"] == "pack")
        .unwrap_or_else(|| panic!("no pack entry: {shown:#}"))
        .clone();
    assert_eq!(pack["state"], "done");
    assert_eq!(pack["attempts"], 1);

    let human = ok(&url, &["show", "parcel-1"]).await.stdout;
    for fact in [
        "id          parcel-1",
        "status      suspended",
        "custom      waiting for approval",
        "items  3",
        "\"id\": \"p1\"",
        "SEQ  KIND",
    ] {
        assert!(human.contains(fact), "show lacks {fact:?}:\n{human}");
    }
    let pack_row = human
        .lines()
        .find(|l| l.contains(" pack "))
        .unwrap_or_else(|| panic!("no pack row:\n{human}"));
    assert!(
        pack_row.contains("step") && pack_row.contains("done"),
        "{pack_row}"
    );

    // Filters: each one that matches, and one that does not.
    let ids = |out: Out| -> Vec<String> {
        out.json()["instances"]
            .as_array()
            .expect("instances")
            .iter()
            .map(|i| i["id"].as_str().expect("id").to_string())
            .collect()
    };
    for filter in [
        &["--workflow", "cli_parcel"][..],
        &["--attr", "items=3"],
        &["--status", "running,suspended"],
        &["--status", "failed", "--status", "suspended"],
        &["--id-prefix", "parcel-"],
        &["--since", "1h"],
    ] {
        let args: Vec<&str> = ["list", "--json"].iter().chain(filter).copied().collect();
        assert_eq!(ids(ok(&url, &args).await), ["parcel-1"], "{filter:?}");
    }
    for filter in [
        &["--workflow", "cli_gated"][..],
        &["--attr", "items=4"],
        &["--status", "completed"],
        &["--id-prefix", "other-"],
        &["--until", "1h"],
    ] {
        let args: Vec<&str> = ["list", "--json"].iter().chain(filter).copied().collect();
        assert!(ids(ok(&url, &args).await).is_empty(), "{filter:?}");
    }
    let table = ok(&url, &["list"]).await.stdout;
    let mut lines = table.lines();
    let header = lines.next().expect("header");
    assert!(
        header.starts_with("ID  ") && header.contains("STATUS"),
        "{table}"
    );
    let row = lines.next().expect("a row");
    assert!(
        row.starts_with("parcel-1  cli_parcel  suspended"),
        "{table}"
    );
    assert!(row.ends_with("waiting for approval"), "{table}");

    // tail follows the instance while a signal moves it on, to the end.
    let follow_url = url.clone();
    let tail = tokio::task::spawn_blocking(move || {
        let mut tail = Follower::spawn(&follow_url, &["tail", "parcel-1"]);
        assert!(tail.wait_for("status: suspended"), "{:?}", tail.stop());
        let sent = orch_blocking(
            &follow_url,
            &["signal", "parcel-1", "approve", "--payload", "true"],
        );
        assert_eq!(sent.code, 0, "{sent:?}");
        assert!(
            sent.stdout.starts_with("sent signal approve to parcel-1"),
            "{sent:?}"
        );
        tail.finish()
    })
    .await
    .expect("tail thread");
    assert_eq!(tail.code, 0, "{tail:?}");
    assert!(
        tail.stderr.contains("following parcel-1 (cli_parcel)"),
        "{tail:?}"
    );
    for fact in [
        "step pack: done",
        "custom status: waiting for approval",
        "deadline approve: waiting",
        "status: suspended",
        "deadline approve: done",
        "signal approve: done",
        "step ship: done",
        "parcel-1 completed",
        "\"Ok\": \"shipped box-p1\"",
    ] {
        assert!(tail.stdout.contains(fact), "tail lacks {fact:?}: {tail:?}");
    }
    let pack_at = tail.stdout.find("step pack").expect("pack");
    let ship_at = tail.stdout.find("step ship").expect("ship");
    assert!(pack_at < ship_at, "{tail:?}");

    // Following an instance that has ended prints its history and ends at once.
    let replay = ok(&url, &["tail", "parcel-1", "--json"]).await;
    let events: Vec<Value> = replay
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect();
    let last = events.last().expect("events");
    assert_eq!(last["event"], "final");
    assert_eq!(last["instance"]["status"], "completed");
    assert_eq!(last["instance"]["output"], json!({"Ok": "shipped box-p1"}));
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "entry" && e["entry"]["name"] == "ship"),
        "{replay:?}"
    );
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_instance_is_retried_restarted_and_forked() {
    let (rt, url) = server().await;
    let failed = orch(
        &url,
        &[
            "start",
            "cli_gated",
            "--input",
            "20",
            "--id",
            "gated-1",
            "--wait",
        ],
    )
    .await;
    assert_eq!(failed.code, 1, "{failed:?}");
    assert!(
        failed.stdout.starts_with("started gated-1 (cli_gated)\n"),
        "{failed:?}"
    );
    assert!(failed.stdout.contains("gated-1 failed"), "{failed:?}");
    assert!(
        failed
            .stderr
            .contains("error: instance gated-1 ended failed"),
        "{failed:?}"
    );
    let shown = ok(&url, &["show", "gated-1"]).await.stdout;
    let gate_row = shown
        .lines()
        .find(|l| l.trim_start().starts_with("2  step  gate "))
        .unwrap_or_else(|| panic!("no gate row:\n{shown}"));
    assert!(
        gate_row.contains("failed") && gate_row.contains("the gate is closed"),
        "{shown}"
    );

    GATE_OPEN.store(true, Ordering::SeqCst);
    let retried = ok(&url, &["retry", "gated-1"]).await;
    assert!(
        retried.stdout.starts_with("retrying gated-1"),
        "{retried:?}"
    );
    let done = wait_for_status(&url, "gated-1", "completed").await;
    assert_eq!(done["instance"]["output"], json!({"Ok": 41}));
    assert!(
        !done["journal"]["superseded"]
            .as_array()
            .expect("superseded")
            .is_empty(),
        "a retry keeps what it replaced: {done:#}"
    );
    let again = orch(&url, &["retry", "gated-1"]).await;
    assert_eq!(
        again.code, 1,
        "retrying a completed instance is refused: {again:?}"
    );
    assert!(again.stderr.starts_with("error: "), "{again:?}");

    let restarted = ok(&url, &["restart", "gated-1", "--json"]).await.json();
    assert_eq!(restarted["restarted_from"], "gated-1");
    let new_id = restarted["id"].as_str().expect("new id").to_string();
    assert_ne!(new_id, "gated-1");
    let tail = ok(&url, &["tail", &new_id]).await;
    assert!(
        tail.stdout.contains(&format!("{new_id} completed")),
        "{tail:?}"
    );

    let forked = ok(&url, &["fork", "gated-1", "--from-seq", "2"]).await;
    let fork_id = forked
        .stdout
        .trim()
        .strip_prefix("forked gated-1 at seq 2 as ")
        .unwrap_or_else(|| panic!("{forked:?}"))
        .to_string();
    let fork = wait_for_status(&url, &fork_id, "completed").await;
    assert_eq!(fork["instance"]["output"], json!({"Ok": 41}));
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_terminate_stop_waiting_instances() {
    let (rt, url) = server().await;
    let input = r#"{"id": "p2", "items": 1}"#;
    for id in ["cancel-me", "terminate-me"] {
        ok(&url, &["start", "cli_parcel", "--input", input, "--id", id]).await;
        wait_for_status(&url, id, "suspended").await;
    }
    let cancelled = ok(&url, &["cancel", "cancel-me", "--reason", "customer asked"]).await;
    assert!(
        cancelled
            .stdout
            .starts_with("cancel requested for cancel-me"),
        "{cancelled:?}"
    );
    let tail = orch(&url, &["tail", "cancel-me"]).await;
    assert_eq!(tail.code, 1, "{tail:?}");
    assert!(tail.stdout.contains("cancel-me cancelled"), "{tail:?}");
    assert!(
        tail.stderr
            .contains("error: instance cancel-me ended cancelled"),
        "{tail:?}"
    );

    let terminated = ok(
        &url,
        &["terminate", "terminate-me", "--reason", "stuck in review"],
    )
    .await;
    assert_eq!(terminated.stdout, "terminate-me terminated\n");
    let shown = ok(&url, &["show", "terminate-me"]).await.stdout;
    assert!(shown.contains("status      terminated"), "{shown}");
    let error = shown
        .lines()
        .find(|l| l.starts_with("error "))
        .unwrap_or_else(|| panic!("no error line:\n{shown}"));
    assert!(error.contains("stuck in review"), "{shown}");

    let refused = orch(&url, &["cancel", "terminate-me"]).await;
    assert_eq!(
        refused.code, 1,
        "cancelling a finished instance: {refused:?}"
    );
    assert!(refused.stderr.starts_with("error: "), "{refused:?}");
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_graphs_and_stats() {
    let (rt, url) = server().await;
    for (id, items) in [("s-1", 2), ("s-2", 5)] {
        let input = format!(r#"{{"id": "{id}", "items": {items}}}"#);
        ok(
            &url,
            &["start", "cli_parcel", "--input", &input, "--id", id],
        )
        .await;
        wait_for_status(&url, id, "suspended").await;
    }

    let defs = ok(&url, &["definitions", "--json"]).await.json();
    let parcel = defs["definitions"]
        .as_array()
        .expect("definitions")
        .iter()
        .find(|d| d["name"] == "cli_parcel")
        .unwrap_or_else(|| panic!("{defs:#}"))
        .clone();
    assert_eq!(parcel["counts"]["suspended"], 2);
    let table = ok(&url, &["definitions"]).await.stdout;
    let row = table
        .lines()
        .find(|l| l.starts_with("cli_parcel "))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.ends_with("2 suspended"), "{table}");
    let one = ok(&url, &["definitions", "cli_parcel"]).await.stdout;
    assert!(one.contains("steps       pack, ship"), "{one}");

    let mermaid = ok(&url, &["graph", "cli_parcel"]).await.stdout;
    assert!(mermaid.contains("\nflowchart TD\n"), "{mermaid}");
    assert!(
        mermaid.contains("pack") && mermaid.contains("approve"),
        "{mermaid}"
    );
    let dot = ok(&url, &["graph", "cli_parcel", "--format", "dot"])
        .await
        .stdout;
    assert!(dot.starts_with("digraph"), "{dot}");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("s-1.svg");
    let file_arg = file.to_str().expect("utf-8 path");
    let wrote = ok(&url, &["graph", "--instance", "s-1", "-o", file_arg]).await;
    assert!(
        wrote.stderr.starts_with(&format!("wrote {file_arg} (svg,")),
        "{wrote:?}"
    );
    let svg = std::fs::read_to_string(&file).expect("svg file");
    assert!(
        svg.contains("<svg") && svg.contains("data-state=\"done\""),
        "{svg}"
    );
    let mismatch = orch(&url, &["graph", "cli_gated", "--instance", "s-1"]).await;
    assert_eq!(mismatch.code, 2, "{mismatch:?}");
    assert!(
        mismatch
            .stderr
            .contains("instance s-1 is of workflow cli_parcel, not cli_gated"),
        "{mismatch:?}"
    );
    let unknown = orch(&url, &["graph", "no_such_workflow"]).await;
    assert_eq!(unknown.code, 1, "{unknown:?}");
    assert!(unknown.stderr.contains("no_such_workflow"), "{unknown:?}");

    let stats = ok(&url, &["stats", "--json", "--attr-key", "items"])
        .await
        .json();
    let suspended: u64 = stats["stats"]["totals"]
        .as_array()
        .expect("totals")
        .iter()
        .filter(|t| t["workflow"] == "cli_parcel" && t["status"] == "suspended")
        .map(|t| t["count"].as_u64().expect("count"))
        .sum();
    assert_eq!(suspended, 2, "{stats:#}");
    assert_eq!(stats["attribute"]["count"], 2);
    assert_eq!(stats["attribute"]["sum"], 7.0);
    let human = ok(
        &url,
        &["stats", "--workflow", "cli_parcel", "--attr-key", "items"],
    )
    .await
    .stdout;
    assert!(
        human.starts_with("instances created in the last 24h"),
        "{human}"
    );
    let mut lines = human.lines().skip(1);
    assert_eq!(
        lines.next(),
        Some("WORKFLOW    SUSPENDED  TOTAL"),
        "{human}"
    );
    assert_eq!(
        lines.next(),
        Some("cli_parcel          2      2"),
        "{human}"
    );
    assert!(human.contains("attribute items\n"), "{human}");
    assert!(
        human.ends_with("        2    7    2    5  3.50\n"),
        "{human}"
    );
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_up_to_the_limit_or_everything() {
    let (rt, url) = server().await;
    for n in 0..5 {
        let input = format!(r#"{{"id": "page-{n}", "items": 1}}"#);
        let id = format!("page-{n}");
        ok(
            &url,
            &["start", "cli_parcel", "--input", &input, "--id", &id],
        )
        .await;
    }
    let two = ok(&url, &["list", "--limit", "2", "--json"]).await.json();
    assert_eq!(two["instances"].as_array().expect("instances").len(), 2);
    assert!(two["next_cursor"].is_string(), "{two:#}");
    let human = ok(&url, &["list", "--limit", "2"]).await;
    assert_eq!(human.stdout.lines().count(), 3, "{human:?}");
    assert!(
        human.stderr.contains("showing the newest 2; more match"),
        "{human:?}"
    );
    let all = ok(&url, &["list", "--all", "--json"]).await.json();
    assert_eq!(all["instances"].as_array().expect("instances").len(), 5);
    assert!(all["next_cursor"].is_null(), "{all:#}");
    let none = ok(&url, &["list", "--workflow", "cli_gated"]).await;
    assert_eq!(none.stdout, "no instances match\n");

    // More than the server's largest page (500): --all and a large --limit follow cursors.
    for n in 0..600u32 {
        rt.start_with_id(CliNoop, &format!("many-{n:03}"), n)
            .await
            .expect("start");
    }
    let ids = |out: Out| -> Vec<String> {
        out.json()["instances"]
            .as_array()
            .expect("instances")
            .iter()
            .map(|i| i["id"].as_str().expect("id").to_string())
            .collect()
    };
    let all = ids(ok(&url, &["list", "--all", "--workflow", "cli_noop", "--json"]).await);
    let expected: Vec<String> = (0..600).map(|n| format!("many-{n:03}")).collect();
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(sorted, expected, "each instance once");
    let limited = ids(ok(
        &url,
        &["list", "--limit", "550", "--id-prefix", "many-", "--json"],
    )
    .await);
    assert_eq!(limited.len(), 550);
    assert_eq!(limited[..], all[..550], "the newest 550, in order");
    rt.shutdown().await.expect("shutdown");
}

#[workflow]
async fn cli_noop(n: u32) -> Result<u32, StepError> {
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_print_the_server_s_message_and_exit_1() {
    let (rt, url) = server().await;
    let unknown = orch(&url, &["show", "no-such-instance"]).await;
    assert_eq!(unknown.code, 1, "{unknown:?}");
    assert!(unknown.stderr.starts_with("error: "), "{unknown:?}");
    assert!(unknown.stderr.contains("no-such-instance"), "{unknown:?}");
    assert!(unknown.stdout.is_empty(), "{unknown:?}");

    let wrong_type = orch(
        &url,
        &[
            "start",
            "cli_parcel",
            "--input",
            r#"{"id": "p", "items": "three"}"#,
        ],
    )
    .await;
    assert_eq!(wrong_type.code, 1, "{wrong_type:?}");
    assert!(
        wrong_type.stderr.contains("items"),
        "names the field: {wrong_type:?}"
    );

    let no_input = orch(&url, &["start", "cli_parcel"]).await;
    assert_eq!(no_input.code, 1, "{no_input:?}");
    assert!(
        no_input.stderr.contains("hint: no --input was given"),
        "{no_input:?}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("input.json");
    std::fs::write(&file, r#"{"id": "from-file", "items": 9}"#).expect("write input");
    let at_file = format!("@{}", file.display());
    let args = ["start", "cli_parcel", "--input", &at_file, "--id", "file-1"];
    assert_eq!(
        ok(&url, &args).await.stdout,
        "started file-1 (cli_parcel)\n"
    );
    let shown = ok(&url, &["show", "file-1", "--json"]).await.json();
    assert_eq!(
        shown["instance"]["input"],
        json!({"id": "from-file", "items": 9})
    );
    std::fs::write(&file, "{\"id\": ").expect("write input");
    let truncated = orch(&url, &["start", "cli_parcel", "--input", &at_file]).await;
    assert_eq!(truncated.code, 2, "{truncated:?}");
    assert!(
        truncated.stderr.contains(&format!(
            "error: --input is not valid JSON (from {}): EOF while parsing",
            file.display()
        )),
        "{truncated:?}"
    );

    let no_workflow = orch(&url, &["start", "no_such_workflow"]).await;
    assert_eq!(no_workflow.code, 1, "{no_workflow:?}");
    assert!(
        no_workflow.stderr.contains("no_such_workflow"),
        "{no_workflow:?}"
    );

    let signal_unknown = orch(&url, &["signal", "no-such-instance", "approve"]).await;
    assert_eq!(signal_unknown.code, 1, "{signal_unknown:?}");
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_required_and_read_tokens_cannot_change_anything() {
    use orch_runtime::HttpConfig;
    let rt = Runtime::builder()
        .in_memory()
        .http_with(
            HttpConfig::new("127.0.0.1:0")
                .admin_token("ops", "s3cret-admin")
                .read_token("viewer", "r3ad-only-token"),
        )
        .build()
        .await
        .expect("runtime with tokens");
    let url = rt.http_url().expect("http url").to_string();

    let missing = orch(&url, &["list"]).await;
    assert_eq!(missing.code, 4, "{missing:?}");
    assert!(
        missing.stderr.contains("pass --token or set ORCH_TOKEN"),
        "{missing:?}"
    );
    let wrong = orch_as(&url, Some("guess"), &["list"]).await;
    assert_eq!(wrong.code, 4, "{wrong:?}");
    assert!(
        wrong.stderr.contains("the token was not accepted"),
        "{wrong:?}"
    );

    let read = orch_as(&url, Some("r3ad-only-token"), &["list"]).await;
    assert_eq!(read.code, 0, "{read:?}");
    let who = orch_as(&url, Some("r3ad-only-token"), &["whoami"]).await;
    assert_eq!(
        who.stdout, "viewer (read); this server: tokens required\n",
        "{who:?}"
    );
    let start = ["start", "cli_gated", "--input", "1", "--id", "by-token"];
    let read_only = orch_as(&url, Some("r3ad-only-token"), &start).await;
    assert_eq!(read_only.code, 4, "{read_only:?}");
    assert!(
        read_only.stderr.contains("the token is read-only"),
        "{read_only:?}"
    );
    let flag = ["--token", "s3cret-admin"]
        .iter()
        .chain(&start)
        .copied()
        .collect::<Vec<_>>();
    let admin = orch(&url, &flag).await;
    assert_eq!(admin.code, 0, "{admin:?}");
    assert_eq!(admin.stdout, "started by-token (cli_gated)\n");
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_without_an_id_prints_status_changes_until_stopped() {
    let (rt, url) = server().await;
    let follow_url = url.clone();
    let tail = tokio::task::spawn_blocking(move || {
        let url = follow_url.as_str();
        let mut tail = Follower::spawn(url, &["tail", "--workflow", "cli_parcel"]);
        assert!(tail.wait_for("(Ctrl-C to stop)"), "{:?}", tail.stop());
        let input = r#"{"id": "w", "items": 1}"#;
        let start = ["start", "cli_parcel", "--input", input, "--id", "watched-1"];
        assert_eq!(orch_blocking(url, &start).code, 0);
        let other = ["start", "cli_gated", "--input", "1", "--id", "other-1"];
        assert_eq!(orch_blocking(url, &other).code, 0);
        assert!(tail.wait_for("suspended"), "{:?}", tail.stop());
        let signal = ["signal", "watched-1", "approve", "--payload", "true"];
        assert_eq!(orch_blocking(url, &signal).code, 0);
        assert!(tail.wait_for("→ completed"), "{:?}", tail.stop());
        tail.stop()
    })
    .await
    .expect("tail thread");
    assert!(
        tail.stderr
            .contains("following status changes of workflow cli_parcel: 0 active now"),
        "{tail:?}"
    );
    let lines: Vec<&str> = tail.stdout.lines().collect();
    assert!(
        lines[0].starts_with("watched-1 (cli_parcel): new, "),
        "{tail:?}"
    );
    assert!(
        lines
            .last()
            .is_some_and(|l| l.starts_with("watched-1 (cli_parcel): suspended → completed")),
        "{tail:?}"
    );
    assert!(!tail.stdout.contains("other-1"), "{tail:?}");
    rt.shutdown().await.expect("shutdown");
}

/// Switched to "deploy" code that calls `cli_third` where `cli_second` was.
static CLI_V2: AtomicBool = AtomicBool::new(false);

#[step]
async fn cli_first() -> Result<u32, StepError> {
    Ok(1)
}

#[step]
async fn cli_second() -> Result<u32, StepError> {
    Ok(2)
}

#[step]
async fn cli_third() -> Result<u32, StepError> {
    Ok(3)
}

/// `early`: waits for `ready` before the step the new code changes.
#[workflow]
async fn cli_evolving(early: bool) -> Result<u32, StepError> {
    let a = cli_first().await?;
    if early {
        let _ready: bool = orch::signal("ready").await;
    }
    let b = if CLI_V2.load(Ordering::SeqCst) {
        cli_third().await?
    } else {
        cli_second().await?
    };
    let _go: bool = orch::signal("go").await;
    Ok(a + b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_are_listed_and_check_reports_what_new_code_cannot_run() {
    let (rt, url) = server().await;
    let this = rt.node_id().to_string();

    let nodes = ok(&url, &["nodes"]).await;
    let mut lines = nodes.stdout.lines();
    let header = lines.next().expect("header");
    assert!(
        header.starts_with("NODE ") && header.contains("STATE") && header.ends_with("INSTANCES"),
        "{nodes:?}"
    );
    let row = lines.next().expect("this node's row");
    assert!(
        row.starts_with(&format!("{this} (this node)")) && row.contains(" live "),
        "{nodes:?}"
    );
    let json = ok(&url, &["nodes", "--json"]).await.json();
    assert_eq!(json["this_node"], json!(this), "{json}");
    assert_eq!(json["nodes"][0]["state"], json!("live"), "{json}");

    for (id, early) in [("ev-1", "false"), ("ev-2", "false"), ("ev-3", "true")] {
        ok(
            &url,
            &["start", "cli_evolving", "--input", early, "--id", id],
        )
        .await;
    }
    for id in ["ev-1", "ev-2", "ev-3"] {
        wait_for_status(&url, id, "suspended").await;
    }
    let listed = ok(&url, &["list", "--id-prefix", "ev-"]).await;
    let header = listed.stdout.lines().next().expect("header");
    assert!(header.contains("  OWNER  "), "{listed:?}");

    // Under the code that started them, every waiting instance replays.
    let fine = ok(&url, &["check"]).await;
    assert_eq!(
        fine.stdout,
        format!(
            "checked 3 waiting instances against node {this}'s code: 3 compatible, 0 incompatible\n"
        ),
        "{fine:?}"
    );

    // "Deploy" code that calls another step where ev-1 and ev-2 journaled cli_second.
    CLI_V2.store(true, Ordering::SeqCst);
    let out = orch(&url, &["check", "--page", "1"]).await;
    assert_eq!(out.code, 1, "incompatible instances exit 1: {out:?}");
    let rows: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("ev-"))
        .collect();
    assert_eq!(rows.len(), 2, "{out:?}");
    for (row, id) in rows.iter().zip(["ev-1", "ev-2"]) {
        assert!(row.starts_with(id), "in id order: {out:?}");
        assert!(
            row.contains("cli_evolving  suspended    2  at seq 2 the journal recorded step `cli_second` but the code now calls step `cli_third`"),
            "{out:?}"
        );
    }
    assert_eq!(
        out.stdout.matches("what to do: ").count(),
        1,
        "the advice once: {out:?}"
    );
    assert!(
        out.stdout.ends_with(&format!(
            "checked 3 waiting instances against node {this}'s code: 1 compatible, 2 incompatible\n"
        )),
        "{out:?}"
    );
    let json = orch(&url, &["check", "--json", "--workflow", "cli_evolving"]).await;
    assert_eq!(json.code, 1, "{json:?}");
    let report = json.json();
    assert_eq!(
        (&report["checked"], &report["compatible"]),
        (&json!(3), &json!(1)),
        "{report}"
    );
    let ids: Vec<&str> = report["incompatible"]
        .as_array()
        .expect("incompatible")
        .iter()
        .map(|i| i["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["ev-1", "ev-2"], "{report}");
    assert_eq!(report["incompatible"][0]["seq"], json!(2), "{report}");

    // Nothing changed: they still wait, and ev-3 continues under the new code.
    for id in ["ev-1", "ev-2", "ev-3"] {
        let shown = ok(&url, &["show", id, "--json"]).await.json();
        assert_eq!(shown["instance"]["status"], json!("suspended"), "{shown}");
    }
    let bad = orch(&url, &["check", "--page", "0"]).await;
    assert_eq!(bad.code, 2, "{bad:?}");
    rt.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_set_changes_a_workflow_queue_s_limits_live() {
    let (rt, url) = server().await;
    let out = ok(
        &url,
        &[
            "queue",
            "set",
            "checkout",
            "--concurrency",
            "5",
            "--per-key",
            "1",
            "--rate",
            "100",
            "--per-ms",
            "60000",
        ],
    )
    .await;
    assert_eq!(
        out.stdout, "queue checkout: concurrency 5, per key 1, 100 per 60000 ms\n",
        "{out:?}"
    );
    let queues = rt.workflow_queues().await.expect("queues");
    let q = queues
        .iter()
        .find(|q| q.queue == "checkout")
        .expect("stored");
    assert_eq!(q.config.concurrency, Some(5));
    assert_eq!(q.config.per_key, Some(1));
    assert_eq!(
        q.config.rate.map(|r| (r.limit, r.period_ms)),
        Some((100, 60_000))
    );
    // Without a limit, the queue has none.
    let out = ok(&url, &["queue", "set", "checkout"]).await;
    assert_eq!(out.stdout, "queue checkout: no limits\n", "{out:?}");
    // A rate without its window is a usage error, and a bad name the server's refusal.
    let out = orch(&url, &["queue", "set", "checkout", "--rate", "5"]).await;
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("--per-ms"), "{out:?}");
    let out = orch(&url, &["queue", "set", "no spaces", "--concurrency", "1"]).await;
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("letters, digits"), "{out:?}");
    rt.shutdown().await.expect("shutdown");
}

// ---------- task queues ----------

#[step(queue = "cli-payments")]
async fn cli_charge(n: u32) -> Result<u32, StepError> {
    Ok(n)
}

#[workflow]
async fn cli_pay(n: u32) -> Result<u32, StepError> {
    cli_charge(n).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_show_depth_in_flight_and_the_workers_that_poll() {
    let rt = Runtime::builder()
        .in_memory()
        .no_workers()
        .http("127.0.0.1:0")
        .build()
        .await
        .expect("runtime with http");
    let url = rt.http_url().expect("http url").to_string();
    let empty = ok(&url, &["queues"]).await;
    assert_eq!(empty.stdout, "no queues\n", "{empty:?}");
    for (id, n) in [("q-1", 1), ("q-2", 2)] {
        rt.start_with_id(CliPay, id, n).await.expect("start");
    }
    // A worker speaking HTTP leases one of the two tasks.
    let http = reqwest::Client::new();
    let lease = format!("{}api/v1/tasks/lease", url);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got: Value = http
            .post(&lease)
            .json(&json!({"worker": "py-cli", "queues": ["cli-payments"], "wait_ms": 1000}))
            .send()
            .await
            .expect("lease")
            .json()
            .await
            .expect("json");
        if got["tasks"].as_array().is_some_and(|t| t.len() == 1) {
            break;
        }
        assert!(Instant::now() < deadline, "no task to lease: {got}");
    }
    let deadline = Instant::now() + PATIENCE;
    let out = loop {
        // The second task is enqueued when its instance ran up to the step.
        let out = ok(&url, &["queues", "--json"]).await;
        let q = &out.json()["queues"][0];
        if q["waiting"] == json!(1) {
            break out;
        }
        assert!(Instant::now() < deadline, "{out:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let j = out.json();
    assert_eq!(j["queues"][0]["kind"], json!("task"), "{j}");
    assert_eq!(j["queues"][0]["in_flight"], json!(1), "{j}");
    assert_eq!(j["queues"][0]["workers"], json!(1), "{j}");
    assert_eq!(j["workers"][0]["id"], json!("py-cli"), "{j}");
    let table = ok(&url, &["queues"]).await;
    let mut lines = table.stdout.lines();
    let header = lines.next().expect("header");
    assert!(
        header.starts_with("QUEUE ") && header.contains("IN FLIGHT") && header.ends_with("WORKERS"),
        "{table:?}"
    );
    let row: Vec<&str> = lines.next().expect("a row").split_whitespace().collect();
    assert_eq!(row[..4], ["cli-payments", "task", "1", "1"], "{table:?}");
    assert!(
        table.stdout.lines().any(|l| l.starts_with("py-cli ")
            && l.contains("cli-payments")
            && l.ends_with("connected")),
        "the worker is listed: {table:?}"
    );
    rt.shutdown().await.expect("shutdown");
}
