//! Clients that open connections and never finish their request headers cannot take the
//! server down: a stalled connection is closed after the header-read timeout, connections are
//! capped below the process's file limit, and `/healthz` keeps answering while 1,000 such
//! connections are open.
//!
//! The tests in this file run one at a time (one of them lowers the process's open-file
//! limit).

#[path = "support/http.rs"]
mod http;

use orch_runtime::HttpConfig;
use reqwest::StatusCode;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Opens `n` connections that each send the start of a request line and stall.
async fn stalled(addr: &str, n: usize) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut c =
            TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect slow client {i}: {e}"));
        c.write_all(b"GET /api/v1/instan").expect("write");
        conns.push(c);
    }
    conns
}

/// GET /healthz on a fresh connection; must answer 200 within a generous deadline.
async fn healthz_answers(base: &str) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .build()
        .expect("client");
    let resp = client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("/healthz answers while slow clients hold connections");
    assert_eq!(resp.status(), StatusCode::OK);
}

fn addr_of(base: &str) -> String {
    base.trim_start_matches("http://").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_while_a_thousand_clients_stall_their_headers() {
    let _one = ONE_AT_A_TIME.lock().await;
    // The defaults: 1024 connections, a 10 s header timeout.
    let s = http::open().await;
    let conns = stalled(&addr_of(&s.base), 1000).await;
    healthz_answers(&s.base).await;
    drop(conns);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_finishes_its_headers_is_closed() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = http::open_config(
        HttpConfig::new("127.0.0.1:0")
            .without_env_tokens()
            .header_read_timeout(Duration::from_millis(300)),
    )
    .await;
    let mut c = stalled(&addr_of(&s.base), 1).await.remove(0);
    // The server closes it: the read ends (EOF or reset), long before this deadline.
    c.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    let read = tokio::task::spawn_blocking(move || {
        let mut buf = Vec::new();
        c.read_to_end(&mut buf)
    })
    .await
    .expect("reader");
    let timed_out = read.as_ref().is_err_and(|e| {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    });
    assert!(
        !timed_out,
        "a connection stalled in its headers was still open after 60 s"
    );
    // A client that sends its request in time is served as usual.
    assert_eq!(s.get("/healthz").await.status, StatusCode::OK);
}

/// The open-file limit this process can spare: the soft limit is lowered so that the slow
/// clients' own sockets plus every connection the server would accept cannot fit, the way a
/// server under `ulimit -n 256` meets 300 slow clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capped_connections_keep_the_server_within_its_file_limit() {
    use rlimit::Resource;
    let _one = ONE_AT_A_TIME.lock().await;
    const SLOW: usize = 1000;
    const CAP: usize = 100;
    let s = http::open_config(
        HttpConfig::new("127.0.0.1:0")
            .without_env_tokens()
            .max_connections(CAP)
            .header_read_timeout(Duration::from_millis(500)),
    )
    .await;
    let open_now = std::fs::read_dir("/proc/self/fd").map_or(64, |d| d.count()) as u64;
    let (soft, hard) = Resource::NOFILE.get().expect("getrlimit");
    // Room for the slow clients, the capped server side and some slack; not for the server
    // accepting every slow client.
    let wanted = open_now + SLOW as u64 + CAP as u64 + 150;
    assert!(
        wanted <= hard,
        "the hard open-file limit {hard} is below {wanted}"
    );
    Resource::NOFILE.set(wanted, hard).expect("setrlimit");
    // Restored however this test ends, for the tests after it.
    struct Restore(u64, u64);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = Resource::NOFILE.set(self.0, self.1);
        }
    }
    let _restore = Restore(soft, hard);
    let started = Instant::now();
    let conns = stalled(&addr_of(&s.base), SLOW).await;
    healthz_answers(&s.base).await;
    drop(conns);
    eprintln!(
        "healthz answered {:?} after the first slow client",
        started.elapsed()
    );
}
