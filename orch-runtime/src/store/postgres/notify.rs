//! Wake-ups between nodes: `NOTIFY` inside the write transaction, `LISTEN` on one dedicated
//! connection per store.
//!
//! The channel is per schema (`orch_<schema>`, cut to PostgreSQL's 63 bytes). A payload is
//! the sending store's token on the first line, then one wake-up per line as a small JSON
//! array; payloads are cut below PostgreSQL's 8000-byte limit. A store ignores its own
//! notifications (its subscribers heard of them in-process already). A wake-up too large for a
//! payload (a big signal) travels as [`Wakeup::Changed`]; so do notifications that cannot be
//! read, and a listening connection that broke (and is reconnected) — whatever was missed is
//! then looked for again.

use super::apply::Tx;
use super::pg_error;
use crate::store::{SignalRecord, Status, StoreError, Wakeup, WakeupHub};
use serde_json::{Value, json};
use std::time::Duration;
use tokio_postgres::{AsyncMessage, Config, NoTls};

/// The largest payload sent (PostgreSQL refuses 8000 bytes and more).
const MAX_PAYLOAD: usize = 7900;

/// The channel of `schema`.
pub(super) fn channel(schema: &str) -> String {
    let mut c = format!("orch_{schema}");
    c.truncate(63);
    c
}

fn encode(w: &Wakeup) -> Value {
    match w {
        Wakeup::Due { instance } => json!(["d", instance]),
        Wakeup::Signal { instance, signal } => json!([
            "s",
            instance,
            signal.id,
            signal.name,
            signal.payload,
            signal.received_at
        ]),
        Wakeup::Cancel { instance, at } => json!(["c", instance, at]),
        Wakeup::ChildFinished { parent, child } => json!(["p", parent, child]),
        Wakeup::Finished { instance, status } => json!(["f", instance, status.as_str()]),
        Wakeup::TaskQueued { queue } => json!(["q", queue]),
        Wakeup::TaskFinished { instance, task } => json!(["t", instance, task]),
        Wakeup::Changed => json!(["x"]),
    }
}

fn decode(line: &str) -> Option<Wakeup> {
    let v: Vec<Value> = serde_json::from_str(line).ok()?;
    let s = |i: usize| v.get(i).and_then(Value::as_str).map(str::to_string);
    let n = |i: usize| v.get(i).and_then(Value::as_i64);
    Some(match v.first()?.as_str()? {
        "d" => Wakeup::Due { instance: s(1)? },
        "s" => Wakeup::Signal {
            instance: s(1)?,
            signal: SignalRecord {
                id: n(2)?,
                name: s(3)?,
                payload: s(4)?,
                received_at: n(5)?,
            },
        },
        "c" => Wakeup::Cancel {
            instance: s(1)?,
            at: n(2)?,
        },
        "p" => Wakeup::ChildFinished {
            parent: s(1)?,
            child: s(2)?,
        },
        "f" => Wakeup::Finished {
            instance: s(1)?,
            status: Status::parse(&s(2)?)?,
        },
        "q" => Wakeup::TaskQueued { queue: s(1)? },
        "t" => Wakeup::TaskFinished {
            instance: s(1)?,
            task: s(2)?,
        },
        _ => Wakeup::Changed,
    })
}

/// The payload announcing that `instance` ended with `status`: the token, then the end's
/// line. A statement that ends a child appends its parent's line (`["p", parent, child]`, as
/// [`decode`] reads it) itself. Instance ids are far below the payload limit.
pub(super) fn finished_payload(token: &str, instance: &str, status: Status) -> String {
    let line = encode(&Wakeup::Finished {
        instance: instance.to_string(),
        status,
    });
    format!("{token}\n{line}")
}

/// The payloads announcing `woken`, each under [`MAX_PAYLOAD`].
fn payloads(token: &str, woken: &[Wakeup]) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = token.to_string();
    for w in woken {
        let mut line = encode(w).to_string();
        if token.len() + line.len() + 2 > MAX_PAYLOAD {
            line = encode(&Wakeup::Changed).to_string();
        }
        if current.len() + line.len() + 1 > MAX_PAYLOAD {
            out.push(std::mem::replace(&mut current, token.to_string()));
        }
        current.push('\n');
        current.push_str(&line);
    }
    if current.len() > token.len() {
        out.push(current);
    }
    out
}

/// Sends `woken` to the other nodes, inside the open transaction (nothing when empty).
pub(super) async fn send(
    tx: Tx<'_>,
    channel: &str,
    token: &str,
    woken: &[Wakeup],
) -> Result<(), StoreError> {
    for payload in payloads(token, woken) {
        tx.execute("SELECT pg_notify($1, $2)", &[&channel, &payload])
            .await
            .map_err(|e| pg_error("announcing a commit to the other nodes (pg_notify)", &e))?;
    }
    Ok(())
}

/// Listens on `channel` until the task is aborted, reconnecting after failures; what other
/// stores announce goes to `hub`. `ready` hears how the first `LISTEN` went, so that the store
/// is not handed out before it hears other nodes (a wake-up sent in between would be lost).
pub(super) async fn listen(
    config: Config,
    channel: String,
    token: String,
    hub: WakeupHub,
    shown: String,
    ready: tokio::sync::oneshot::Sender<Result<(), String>>,
) {
    let mut first = true;
    let mut ready = Some(ready);
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let pump = async {
                    loop {
                        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                            Some(Ok(AsyncMessage::Notification(n))) => {
                                let mut lines = n.payload().lines();
                                if lines.next() == Some(token.as_str()) {
                                    continue;
                                }
                                for line in lines {
                                    hub.send(decode(line).unwrap_or(Wakeup::Changed));
                                }
                            }
                            Some(Ok(_)) => {}
                            Some(Err(e)) => return e.to_string(),
                            None => return "the connection closed".to_string(),
                        }
                    }
                };
                let subscribe = async {
                    let listened = client.batch_execute(&format!("LISTEN \"{channel}\"")).await;
                    if let Some(ready) = ready.take() {
                        let _ =
                            ready.send(listened.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                    }
                    if let Err(e) = listened {
                        tracing::error!(store = %shown, error = %e, "LISTEN failed");
                    } else if !first {
                        // Whatever was announced while the connection was down is looked for again.
                        hub.send(Wakeup::Changed);
                    }
                    std::future::pending::<()>().await
                };
                let why = tokio::select! {
                    why = pump => why,
                    () = subscribe => String::new(),
                };
                tracing::warn!(store = %shown, error = %why,
                    "the connection listening for other nodes' wake-ups ended; reconnecting");
            }
            Err(e) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(e.to_string()));
                }
                tracing::warn!(store = %shown, error = %e,
                    "cannot connect to listen for other nodes' wake-ups; retrying");
            }
        }
        first = false;
        hub.send(Wakeup::Changed);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn wakeup() -> impl Strategy<Value = Wakeup> {
        let s = || "(?s).{0,40}";
        prop_oneof![
            s().prop_map(|instance| Wakeup::Due { instance }),
            (s(), any::<i64>(), s(), ".{0,3000}", any::<i64>()).prop_map(
                |(instance, id, name, payload, received_at)| Wakeup::Signal {
                    instance,
                    signal: SignalRecord {
                        id,
                        name,
                        payload,
                        received_at,
                    },
                }
            ),
            (s(), any::<i64>()).prop_map(|(instance, at)| Wakeup::Cancel { instance, at }),
            (s(), s()).prop_map(|(parent, child)| Wakeup::ChildFinished { parent, child }),
            (s(), prop::sample::select(Status::ALL.to_vec()))
                .prop_map(|(instance, status)| Wakeup::Finished { instance, status }),
            s().prop_map(|queue| Wakeup::TaskQueued { queue }),
            (s(), s()).prop_map(|(instance, task)| Wakeup::TaskFinished { instance, task }),
            Just(Wakeup::Changed),
        ]
    }

    proptest! {
        /// A notification is text another process sent: whatever it holds, reading it never
        /// panics (an unreadable line is a `Changed`, looked for again).
        #[test]
        fn any_payload_line_decodes_without_panicking(line in any::<String>()) {
            let _ = decode(&line);
        }

        #[test]
        fn any_json_array_decodes_without_panicking(
            items in prop::collection::vec(prop_oneof![
                ".{0,8}".prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                Just(Value::Null),
            ], 0..7)
        ) {
            let _ = decode(&Value::Array(items).to_string());
        }

        /// Every wake-up sent reaches the other nodes as itself, or as `Changed` when it is too
        /// large for a payload; payloads stay under PostgreSQL's limit; nothing is lost.
        #[test]
        fn payloads_carry_every_wakeup_under_the_limit(woken in prop::collection::vec(wakeup(), 0..40)) {
            let token = "host-1-00ff";
            let sent = payloads(token, &woken);
            let mut got = Vec::new();
            for p in &sent {
                prop_assert!(p.len() < 8000, "payload of {} bytes", p.len());
                let mut lines = p.lines();
                prop_assert_eq!(lines.next(), Some(token));
                got.extend(lines.map(|l| decode(l).unwrap_or(Wakeup::Changed)));
            }
            prop_assert_eq!(got.len(), woken.len());
            for (g, w) in got.iter().zip(&woken) {
                let (g, w) = (format!("{g:?}"), format!("{w:?}"));
                prop_assert!(g == w || g == "Changed", "sent {w}, received {g}");
            }
        }
    }
}
