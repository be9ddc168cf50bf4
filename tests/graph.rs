//! The process drawn from the code: the shape `#[workflow]` extracts from real workflows,
//! node by node; its Mermaid, DOT and SVG renderings; and the SVG coloured by the journals of
//! real runs on the in-memory runtime (completed, compensated, retried).
#![allow(clippy::unwrap_used)]

use orch_runtime::graph::{Arm, Drawing, Node, NodeState, Trace};
use orch_runtime::prelude::*;
use orch_runtime::workflow::Registry;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

const fn call(name: &'static str) -> Node {
    Node::Call {
        name,
        may_fail: false,
    }
}

const fn call_q(name: &'static str) -> Node {
    Node::Call {
        name,
        may_fail: true,
    }
}

// ---------- steps shared by the workflows below ----------

#[step]
async fn validate(n: u32) -> Result<u32, StepError> {
    Ok(n)
}

#[step]
async fn enrich(n: u32) -> u32 {
    n + 1
}

#[step]
async fn store_it(n: u32) -> Result<u32, StepError> {
    Ok(n)
}

#[step]
async fn small(n: u32) -> u32 {
    n
}

#[step]
async fn large(n: u32) -> u32 {
    n
}

#[step]
async fn audit(n: u32) -> Result<(), StepError> {
    let _ = n;
    Ok(())
}

// ---------- sequential ----------

#[workflow]
#[allow(dead_code, reason = "only its shape is checked; it is never run")]
async fn sequential(n: u32) -> Result<u32, StepError> {
    orch::set_status("validating").await;
    let v = validate(n).await?;
    let e = enrich(v).await;
    store_it(e).await
}

#[test]
fn a_sequence_of_calls_keeps_program_order_and_marks_question_marks() {
    assert_eq!(
        *Sequential::SHAPE,
        const {
            Node::Seq(&[
                Node::Status {
                    label: "\"validating\"",
                },
                call_q("validate"),
                call("enrich"),
                call("store_it"),
            ])
        }
    );
}

// ---------- branching ----------

#[workflow]
#[allow(dead_code, reason = "only its shape is checked; it is never run")]
async fn branching(n: u32) -> Result<u32, StepError> {
    let v = validate(n).await?;
    let sized = if v > 100 {
        large(v).await
    } else if v == 0 {
        return Ok(0);
    } else {
        small(v).await
    };
    match store_it(sized).await {
        Ok(x) if x > 5 => audit(x).await?,
        Ok(_) => {}
        Err(e) => return Err(e),
    }
    Ok(sized)
}

#[test]
fn if_else_if_and_match_become_branches_with_their_labels() {
    assert_eq!(
        *Branching::SHAPE,
        const {
            Node::Seq(&[
                call_q("validate"),
                Node::Branch {
                    label: "if v > 100",
                    arms: &[
                        Arm {
                            label: "then",
                            body: &[call("large")],
                        },
                        Arm {
                            label: "else",
                            body: &[Node::Branch {
                                label: "if v == 0",
                                arms: &[
                                    Arm {
                                        label: "then",
                                        body: &[Node::Return],
                                    },
                                    Arm {
                                        label: "else",
                                        body: &[call("small")],
                                    },
                                ],
                            }],
                        },
                    ],
                },
                call("store_it"),
                Node::Branch {
                    label: "match store_it(…)",
                    arms: &[
                        Arm {
                            label: "Ok(x) if x > 5",
                            body: &[call_q("audit")],
                        },
                        Arm {
                            label: "Ok(_)",
                            body: &[],
                        },
                        Arm {
                            label: "Err(e)",
                            body: &[Node::Return],
                        },
                    ],
                },
            ])
        }
    );
}

// ---------- loops ----------

#[workflow]
#[allow(dead_code, reason = "only its shape is checked; it is never run")]
async fn looping(items: Vec<u32>) -> u32 {
    let mut total = 0;
    for item in items.iter().copied() {
        total += enrich(item).await;
        if total > 1000 {
            break;
        }
    }
    while let Some(more) = orch::signal_with_timeout::<u32>("more", secs(1)).await {
        total += small(more).await;
    }
    // No durable call inside: not part of the shape.
    for _ in 0..3 {
        total += 1;
    }
    total
}

#[test]
fn for_and_while_let_become_loops_and_the_condition_call_runs_in_each_round() {
    assert_eq!(
        *Looping::SHAPE,
        const {
            Node::Seq(&[
                Node::Loop {
                    label: "for item in items.iter().copied()",
                    body: &[call("enrich")],
                },
                Node::Loop {
                    label: "while let Some(more) = signal_with_timeout(…)",
                    body: &[
                        Node::Signal {
                            name: "more",
                            timeout: true,
                        },
                        call("small"),
                    ],
                },
            ])
        }
    );
}

// ---------- parallel, background, timers, signals, children ----------

#[workflow]
async fn child_flow(n: u32) -> u32 {
    small(n).await
}

#[workflow]
#[allow(dead_code, reason = "only its shape is checked; it is never run")]
async fn everything(n: u32) -> Result<u32, StepError> {
    // A sequence inside a join! branch is not replay-safe (the macro refuses it); the opt-out
    // keeps it here because only the drawing of such a branch is under test.
    #[orch(deterministic)]
    let (a, b) = tokio::join!(small(n), async {
        let v = validate(n).await?;
        store_it(v).await
    });
    orch::sleep(secs(60)).await;
    let approved: bool = orch::signal("approve").await;
    let c = child_flow(a).await;
    let d = orch::call_workflow::<ChildFlow>(c).await;
    orch::background(audit(d));
    if !approved {
        return Err(StepError::permanent("not approved"));
    }
    b
}

#[test]
fn join_sleep_signal_children_and_background_are_recognised() {
    assert_eq!(
        *Everything::SHAPE,
        const {
            Node::Seq(&[
                Node::Parallel(&[
                    call("small"),
                    Node::Seq(&[call_q("validate"), call("store_it")]),
                ]),
                Node::Sleep { label: "secs(60)" },
                Node::Signal {
                    name: "approve",
                    timeout: false,
                },
                call("child_flow"),
                Node::Child {
                    workflow: "child_flow",
                    may_fail: false,
                },
                Node::Background(&call("audit")),
                Node::Branch {
                    label: "if !approved",
                    arms: &[
                        Arm {
                            label: "then",
                            body: &[Node::Return],
                        },
                        Arm {
                            label: "else",
                            body: &[],
                        },
                    ],
                },
            ])
        }
    );
}

#[test]
fn the_shape_is_registered_with_the_definition() {
    let registry = Registry::collect().unwrap();
    let def = registry.get("everything").unwrap();
    assert_eq!(def.shape, Everything::SHAPE);
    assert_eq!(
        def.shape.calls(),
        [
            "small",
            "validate",
            "store_it",
            "child_flow",
            "child_flow",
            "audit"
        ]
    );
}

#[test]
fn mermaid_and_dot_name_every_node_and_edge() {
    let mermaid = Drawing::new(Everything::SHAPE).mermaid();
    for line in [
        "flowchart TD",
        "    start([\"start\"])",
        // A call to a registered workflow is drawn as a child (a subroutine box).
        "    n8[[\"child_flow\"]]",
        "    n6>\"sleep secs(60)\"]",
        "    n11[\"audit\"]:::background",
        "    n4 -.->|\"Err\"| error_exit",
        "    n12 -->|\"then\"| n13",
        "    n12 -->|\"else\"| finish",
    ] {
        assert!(
            mermaid.lines().any(|l| l == line),
            "missing {line:?} in\n{mermaid}"
        );
    }
    let dot = Drawing::new(Branching::SHAPE).title("branching").dot();
    for line in [
        "digraph workflow {",
        "    n2 [label=\"if v > 100\", shape=diamond];",
        "    n2 -> n3 [label=\"then\"];",
        "    n10 [label=\"return\", shape=oval, fillcolor=\"#e2e8f0\"];",
        "    n1 -> error_exit [label=\"Err\", style=dashed, color=\"#dc2626\"];",
    ] {
        assert!(dot.lines().any(|l| l == line), "missing {line:?} in\n{dot}");
    }
}

// ---------- runs: a checkout with compensation ----------

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
struct Order {
    id: u32,
    declined: bool,
}

static RESERVE_CALLS: AtomicU32 = AtomicU32::new(0);

#[step]
async fn create_order(order: &Order) -> Result<u32, StepError> {
    Ok(order.id)
}

/// Fails its first attempt for order 3 (to show a retried step).
#[step(retry = Retry::fixed(ms(1)).max_attempts(3))]
async fn reserve_inventory(order: &Order) -> Result<String, StepError> {
    if order.id == 3 && RESERVE_CALLS.fetch_add(1, Ordering::SeqCst) == 0 {
        return Err(StepError::retryable("inventory busy"));
    }
    Ok(format!("res-{}", order.id))
}

#[step]
async fn charge_payment(order: &Order) -> Result<String, StepError> {
    if order.declined {
        Err(StepError::permanent("card declined"))
    } else {
        Ok(format!("charge-{}", order.id))
    }
}

#[step]
async fn release_inventory(reservation: &str) -> Result<(), StepError> {
    let _ = reservation;
    Ok(())
}

#[step]
async fn ship_order(order: &Order) -> Result<String, StepError> {
    Ok(format!("parcel-{}", order.id))
}

#[step]
async fn record_analytics(order: u32, event: &'static str) -> Result<(), StepError> {
    let _ = (order, event);
    Ok(())
}

/// The checkout example's flow, with local steps.
#[workflow]
async fn shop(order: Order) -> Result<String, StepError> {
    orch::set_status("creating order").await;
    create_order(&order).await?;
    let reservation = reserve_inventory(&order).await?;
    match charge_payment(&order).await {
        Ok(_) => {}
        Err(failure) => {
            release_inventory(&reservation).await?;
            orch::background(record_analytics(order.id, "checkout_failed"));
            return Err(failure);
        }
    }
    let parcel = ship_order(&order).await?;
    orch::background(record_analytics(order.id, "checkout_completed"));
    Ok(parcel)
}

/// Runs `shop` for `order` and returns its SVG, coloured by the run, with its trace.
async fn drawn_run(order: Order) -> (String, Trace) {
    let rt = Runtime::builder().in_memory().build().await.unwrap();
    let run = rt.start(Shop, order).await.unwrap();
    let _ = run.result().await.unwrap();
    let status = run.status().await.unwrap();
    let journal = rt.journal(run.id()).await.unwrap();
    let def = Registry::collect().unwrap().get("shop").unwrap();
    let trace = Trace::of(def.shape, status, &journal);
    assert_eq!(trace.unmatched(), 0, "journal: {journal:#?}");
    let svg = def.drawing().run(&trace).svg();
    (svg, trace)
}

/// Each drawn node's `(name, state)`, in document order, from the SVG parsed as XML.
fn node_states(svg: &str) -> Vec<(String, String)> {
    let doc = roxmltree::Document::parse(svg).expect("the SVG is well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    assert_eq!(
        root.tag_name().namespace(),
        Some("http://www.w3.org/2000/svg")
    );
    // Self-contained: nothing to fetch, nothing to run.
    assert!(!doc.descendants().any(|n| {
        matches!(n.tag_name().name(), "script" | "image" | "foreignObject")
            || n.attributes().any(|a| a.name() == "href")
    }));
    doc.descendants()
        .filter(|n| n.attribute("data-name").is_some())
        .map(|n| {
            (
                n.attribute("data-name").unwrap().to_string(),
                n.attribute("data-state").unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[tokio::test]
async fn a_completed_run_is_drawn_done_along_its_path_and_skipped_elsewhere() {
    let (svg, trace) = drawn_run(Order {
        id: 1,
        declined: false,
    })
    .await;
    assert_eq!(
        node_states(&svg),
        pairs(&[
            ("create_order", "done"),
            ("reserve_inventory", "done"),
            ("charge_payment", "done"),
            ("release_inventory", "skipped"),
            ("record_analytics", "skipped"),
            ("ship_order", "done"),
            ("record_analytics", "done"),
        ])
    );
    assert_eq!(trace.state_of("ship_order"), Some(NodeState::Done));
}

#[tokio::test]
async fn a_declined_card_is_drawn_failed_then_compensated_and_shipping_skipped() {
    let (svg, trace) = drawn_run(Order {
        id: 2,
        declined: true,
    })
    .await;
    assert_eq!(
        node_states(&svg),
        pairs(&[
            ("create_order", "done"),
            ("reserve_inventory", "done"),
            ("charge_payment", "failed"),
            ("release_inventory", "done"),
            ("record_analytics", "done"),
            ("ship_order", "skipped"),
            ("record_analytics", "skipped"),
        ])
    );
    assert_eq!(trace.state_of("charge_payment"), Some(NodeState::Failed));
    // The colours are in the document, with a legend for them.
    assert!(svg.contains("class=\"node step failed\""));
    assert!(svg.contains(">failed</text>"));
}

#[tokio::test]
async fn a_step_that_needed_a_second_attempt_is_drawn_retried() {
    let (svg, _) = drawn_run(Order {
        id: 3,
        declined: false,
    })
    .await;
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let reserve = doc
        .descendants()
        .find(|n| n.attribute("data-name") == Some("reserve_inventory"))
        .unwrap();
    let attrs: HashMap<&str, &str> = reserve
        .attributes()
        .map(|a| (a.name(), a.value()))
        .collect();
    assert_eq!(attrs["data-state"], "retried");
    assert_eq!(attrs["data-attempts"], "2");
    assert!(
        reserve
            .descendants()
            .any(|n| n.text() == Some("2 attempts"))
    );
}

#[test]
fn the_uncoloured_drawing_is_valid_xml_with_start_end_and_every_call() {
    let svg = Drawing::new(Everything::SHAPE).title("everything").svg();
    let names: Vec<String> = node_states(&svg).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "small",
            "validate",
            "store_it",
            "approve",
            "child_flow",
            "child_flow",
            "audit"
        ]
    );
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let texts: Vec<&str> = doc.descendants().filter_map(|n| n.text()).collect();
    for t in ["start", "end", "return", "parallel", "sleep secs(60)"] {
        assert!(texts.contains(&t), "no {t:?} in the drawing");
    }
}

#[test]
fn odd_shapes_built_by_hand_still_draw_valid_svg() {
    // A branch without arms and text XML forbids: no panic, and the SVG parses.
    static EMPTY: Node = Node::Branch {
        label: "if nothing",
        arms: &[],
    };
    static ODD: Node = Node::Seq(&[Node::Call {
        name: "odd\u{FFFF}\u{FFFE}name<&>",
        may_fail: true,
    }]);
    for shape in [&EMPTY, &ODD] {
        let svg = Drawing::new(shape).title("odd \u{FFFF} title").svg();
        roxmltree::Document::parse(&svg).expect("valid XML");
    }
}
