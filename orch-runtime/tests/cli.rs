//! The `orch` binary against a server: a real runtime serving HTTP in-process on an ephemeral
//! port, and a fake server for answers the contract does not allow.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

/// Runs `orch` with `args` (blocking; call from `spawn_blocking` while a server runs).
fn orch_blocking(url: &str, args: &[&str]) -> Out {
    let output = Command::new(env!("CARGO_BIN_EXE_orch"))
        .args(args)
        .env("ORCH_URL", url)
        .env_remove("ORCH_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("run orch");
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
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let out = orch_blocking(&url, &["list"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("error: cannot reach the orch server at {url}")),
        "{out:?}"
    );
    assert!(out.stderr.contains("--url or ORCH_URL"), "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(30), "{out:?}");
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
