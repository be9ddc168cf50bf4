//! The checkout example's flags for running on several nodes: `--services-only` prints one line
//! a user can paste after `--services`, that value is read back exactly, and a bad value (or a
//! flag that makes no sense beside another) is refused with what to do, starting nothing.

#[allow(dead_code)]
#[path = "../examples/checkout/services.rs"]
mod services;
mod support;

use proptest::prelude::*;
use services::{NAMES, endpoints_value, parse_endpoints};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::{example_binary, wait_bounded};

fn urls() -> Vec<String> {
    (0..NAMES.len())
        .map(|i| format!("http://127.0.0.1:{}", 41001 + i))
        .collect()
}

#[test]
fn the_services_value_reads_back_in_any_order_with_spaces_and_a_trailing_slash() {
    let urls = urls();
    assert_eq!(parse_endpoints(&endpoints_value(&urls)), Ok(urls.clone()));
    let shuffled = "analytics=http://127.0.0.1:41005/, shipping=http://127.0.0.1:41004,\
                    payment=http://127.0.0.1:41003,inventory=http://127.0.0.1:41002,\
                    orders = http://127.0.0.1:41001";
    assert_eq!(parse_endpoints(shuffled), Ok(urls));
    // A default port is written out too, so a printed value always reads back as printed.
    let at_80: Vec<String> = NAMES.iter().map(|_| "http://10.0.0.5:80".into()).collect();
    assert_eq!(parse_endpoints(&endpoints_value(&at_80)), Ok(at_80));
}

#[test]
fn a_bad_services_value_is_refused_with_what_is_wrong() {
    let good = endpoints_value(&urls());
    let cases = [
        (
            "",
            "no URL for orders, inventory, payment, shipping, analytics",
        ),
        (
            "orders=http://127.0.0.1:1",
            "no URL for inventory, payment, shipping, analytics",
        ),
        (
            &format!("{good},billing=http://127.0.0.1:9"),
            "`billing` is not one of the services",
        ),
        (
            &format!("{good},orders=http://127.0.0.1:9"),
            "`orders` is given twice",
        ),
        (&good.replace("orders=", "orders:"), "is not NAME=URL"),
        (
            &good.replace("http://127.0.0.1:41003", "127.0.0.1:41003"),
            "is not a URL",
        ),
        (
            &good.replace("41003", "41003/charges"),
            "is not a service's base URL",
        ),
        (
            &good.replace("http://127.0.0.1:41003", "ftp://127.0.0.1:41003"),
            "is not a service's base URL",
        ),
    ];
    for (value, why) in cases {
        let err = parse_endpoints(value).expect_err(value);
        assert!(err.contains(why), "{value:?}: {err}");
        // What a whole value looks like, or what one URL should be.
        assert!(
            err.contains("checkout --services-only") || err.contains("http://"),
            "says what to give instead: {err}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn reading_a_services_value_never_panics(raw in any::<String>()) {
        let _ = parse_endpoints(&raw);
    }

    #[test]
    fn service_like_text_never_panics(raw in "[a-z=:/.,0-9 \\[\\]@?#%é-]{0,120}") {
        let _ = parse_endpoints(&raw);
    }

    #[test]
    fn every_printed_value_reads_back(
        ports in proptest::collection::vec(1u16.., NAMES.len()),
        octets in proptest::collection::vec(any::<u8>(), 4),
    ) {
        let host = format!("{}.{}.{}.{}", octets[0], octets[1], octets[2], octets[3]);
        let urls: Vec<String> = ports.iter().map(|p| format!("http://{host}:{p}")).collect();
        prop_assert_eq!(parse_endpoints(&endpoints_value(&urls)), Ok(urls));
    }
}

/// Runs the example with `args` to its end; returns (success, stdout, stderr).
fn run(args: &[&str], dir: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(example_binary())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run the example");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_node_given_a_bad_services_value_says_why_and_starts_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ok, _, stderr) = run(
        &["--services", "orders=http://127.0.0.1:1", "--no-http"],
        dir.path(),
    );
    assert!(!ok);
    assert!(
        stderr.contains("--services: no URL for inventory"),
        "{stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
    assert!(left.is_empty(), "created {left:?}");
}

#[test]
fn flags_that_make_no_sense_together_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (args, why) in [
        (&["--schema", "x"][..], "--postgres"),
        (
            &["--services-only", "--postgres", "postgres://x"][..],
            "cannot be used",
        ),
        (
            &["--services", "x", "--step-delay-ms", "5"][..],
            "cannot be used",
        ),
        (&["--bind", "127.0.0.1"][..], "--services-only"),
        (&["--lease-ms", "5"][..], "5 is not in 100.."),
        (&["--services-only", "--bind", "0.0.0.0"][..], "not 0.0.0.0"),
        (&["--node", "a b", "--no-http"][..], "--node: node id"),
    ] {
        let (ok, _, stderr) = run(args, dir.path());
        assert!(!ok, "{args:?} accepted");
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
    assert!(left.is_empty(), "created {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_only_prints_one_line_to_paste_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("services.log");
    let mut child = Command::new(example_binary())
        .arg("--services-only")
        .arg("--service-log")
        .arg(&log)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the services");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read the line");
    let value = line
        .strip_prefix("services: ")
        .and_then(|v| v.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("not a services line: {line:?}"));
    let urls = parse_endpoints(value).expect("a value --services reads");
    // They serve: the orders service answers a request (and logs it, with the calling node).
    let answer = reqwest::Client::new()
        .post(format!("{}/orders", urls[0]))
        .header("idempotency-key", "order-1/4")
        .header("orch-node", "n1")
        .json(&serde_json::json!({ "order": "order-1", "items": [] }))
        .send()
        .await
        .expect("the orders service answers");
    assert!(answer.status().is_success(), "{answer:?}");
    let logged = services::read_log(&log).expect("log");
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(logged[0].node.as_deref(), Some("n1"));

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = wait_bounded(&mut child, Duration::from_secs(60));
    assert!(exit.success(), "{exit:?}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).expect("rest");
    assert_eq!(rest, "", "stdout holds the one line only");
}
