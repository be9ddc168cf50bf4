//! Token configuration is exact: the `Bearer` scheme is matched case-insensitively (RFC 9110),
//! and a malformed `ORCH_ADMIN_TOKENS` / `ORCH_READ_TOKENS` entry, or one secret configured
//! twice (in both lists, or in the builder and the environment), fails `build()` with an error
//! naming the variable and the entry — never the secret — instead of locking a user out or
//! silently downgrading them. The environment is process-wide, so each configuration is built
//! in a child process (this test binary, re-run with the variables set).

use orch_runtime::HttpConfig;
use orch_runtime::prelude::*;
use std::process::Command;

#[workflow]
async fn noop(n: u32) -> u32 {
    n
}

const CHILD: &str = "ORCH_TOKENS_TEST_CHILD";
const CHILD_BUILDER_SECRET: &str = "ORCH_TOKENS_TEST_BUILDER_SECRET";

/// In a child process only: builds a runtime whose server reads the token variables, and
/// prints the outcome.
#[tokio::test]
async fn child_build() {
    if std::env::var(CHILD).is_err() {
        return;
    }
    let mut config = HttpConfig::new("127.0.0.1:0");
    if let Ok(secret) = std::env::var(CHILD_BUILDER_SECRET) {
        config = config.admin_token("builder-ops", secret);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Runtime::builder()
        .sqlite(dir.path().join("orch.db"))
        .http_with(config)
        .build()
        .await;
    match out {
        Ok(_) => println!("RESULT: ok"),
        Err(e) => println!("RESULT: err {e}"),
    }
}

/// Builds in a child process with `env` set; `Ok(())` or the build error's text.
fn build_with(env: &[(&str, &str)]) -> Result<(), String> {
    let exe = std::env::current_exe().expect("test binary");
    let mut cmd = Command::new(exe);
    cmd.args(["child_build", "--exact", "--nocapture", "--test-threads=1"]);
    for var in [
        "ORCH_ADMIN_TOKENS",
        "ORCH_READ_TOKENS",
        "ORCH_WORKER_TOKENS",
        CHILD_BUILDER_SECRET,
    ] {
        cmd.env_remove(var);
    }
    cmd.env(CHILD, "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("RESULT: ").map(|(_, r)| r))
        .unwrap_or_else(|| {
            panic!(
                "the child printed no result:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    match line.strip_prefix("err ") {
        Some(e) => Err(e.to_string()),
        None => Ok(()),
    }
}

fn refused(env: &[(&str, &str)], must_say: &[&str], secrets: &[&str]) {
    let err = build_with(env)
        .err()
        .unwrap_or_else(|| panic!("{env:?} must fail build()"));
    for part in must_say {
        assert!(
            err.contains(part),
            "{env:?}: the error `{err}` should say `{part}`"
        );
    }
    for secret in secrets {
        assert!(
            !err.contains(secret),
            "{env:?}: the error prints a secret: {err}"
        );
    }
}

#[test]
fn malformed_or_duplicated_tokens_fail_build_naming_the_entry() {
    // Well-formed lists build.
    assert_eq!(
        build_with(&[
            ("ORCH_ADMIN_TOKENS", "ops:admin-secret-1, ci:admin-secret-2"),
            ("ORCH_READ_TOKENS", "viewer:read-secret-1"),
            ("ORCH_WORKER_TOKENS", "payments:worker-secret-1"),
        ]),
        Ok(())
    );
    refused(
        &[("ORCH_WORKER_TOKENS", "payments:worker-secret-1,nosecret")],
        &["ORCH_WORKER_TOKENS entry 2", "`:`"],
        &["worker-secret-1"],
    );
    refused(
        &[
            ("ORCH_WORKER_TOKENS", "payments:shared-secret-3"),
            ("ORCH_READ_TOKENS", "viewer:shared-secret-3"),
        ],
        &[
            "ORCH_READ_TOKENS entry 1",
            "ORCH_WORKER_TOKENS entry 1",
            "same secret",
        ],
        &["shared-secret-3"],
    );
    // A space after the colon would make the secret unsendable: a silent lockout.
    refused(
        &[("ORCH_ADMIN_TOKENS", "ops: admin-secret-1")],
        &["ORCH_ADMIN_TOKENS entry 1", "space"],
        &["admin-secret-1"],
    );
    refused(
        &[("ORCH_ADMIN_TOKENS", "ops :admin-secret-1")],
        &["ORCH_ADMIN_TOKENS entry 1", "name"],
        &["admin-secret-1"],
    );
    refused(
        &[("ORCH_READ_TOKENS", "viewer:read-secret-1,:read-secret-2")],
        &["ORCH_READ_TOKENS entry 2", "empty name"],
        &["read-secret-1", "read-secret-2"],
    );
    refused(
        &[("ORCH_ADMIN_TOKENS", "admin-secret-without-name")],
        &["ORCH_ADMIN_TOKENS entry 1", "`:`"],
        &["admin-secret-without-name"],
    );
    refused(
        &[("ORCH_ADMIN_TOKENS", "ops:admin-secret-1,,ci:admin-secret-2")],
        &["ORCH_ADMIN_TOKENS entry 2", "empty"],
        &["admin-secret-1", "admin-secret-2"],
    );
    refused(
        &[("ORCH_ADMIN_TOKENS", "ops:short")],
        &["ORCH_ADMIN_TOKENS entry 1", "bytes"],
        &[":short"],
    );
    // One secret in both lists: which role would the caller get?
    refused(
        &[
            ("ORCH_ADMIN_TOKENS", "ops:shared-secret-1"),
            ("ORCH_READ_TOKENS", "viewer:shared-secret-1"),
        ],
        &[
            "ORCH_ADMIN_TOKENS entry 1",
            "ORCH_READ_TOKENS entry 1",
            "same secret",
        ],
        &["shared-secret-1"],
    );
    // The builder and the environment with one secret and different roles.
    refused(
        &[
            (CHILD_BUILDER_SECRET, "shared-secret-2"),
            ("ORCH_READ_TOKENS", "viewer:shared-secret-2"),
        ],
        &[
            "admin_token(\"builder-ops\"",
            "ORCH_READ_TOKENS entry 1",
            "same secret",
        ],
        &["shared-secret-2"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = Runtime::builder()
        .sqlite(dir.path().join("orch.db"))
        .http_with(
            HttpConfig::new("127.0.0.1:0")
                .without_env_tokens()
                .admin_token("ops", "admin-secret-1"),
        )
        .build()
        .await
        .expect("runtime");
    let url = format!("{}api/v1/whoami", rt.http_url().expect("server"));
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    for value in [
        "Bearer admin-secret-1",
        "bearer admin-secret-1",
        "BEARER admin-secret-1",
        "bEaReR   admin-secret-1",
    ] {
        let res = http
            .get(&url)
            .header("authorization", value)
            .send()
            .await
            .expect("get");
        assert_eq!(res.status(), 200, "`{value}`");
    }
    for value in [
        "Basic admin-secret-1",
        "Bearer",
        "Beareradmin-secret-1",
        "admin-secret-1",
    ] {
        let res = http
            .get(&url)
            .header("authorization", value)
            .send()
            .await
            .expect("get");
        assert_eq!(res.status(), 401, "`{value}`");
    }
    // In the builder alone, one secret for two tokens is refused too.
    let err = Runtime::builder()
        .sqlite(dir.path().join("other.db"))
        .http_with(
            HttpConfig::new("127.0.0.1:0")
                .without_env_tokens()
                .admin_token("ops", "shared-secret-3")
                .read_token("viewer", "shared-secret-3"),
        )
        .build()
        .await
        .err()
        .expect("a shared secret fails build()")
        .to_string();
    assert!(
        err.contains("same secret") && !err.contains("shared-secret-3"),
        "{err}"
    );
}
