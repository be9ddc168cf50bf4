//! The checkout workflow of `examples/checkout` tested as code, with the test runtime: every
//! service is a type-checked mock, time is virtual, and crash-point exploration checks that a
//! crash after any checkpoint resumes to the same result without calling a service again.

#[allow(dead_code)]
#[path = "../examples/checkout/services.rs"]
mod services;
#[allow(dead_code)]
#[path = "../examples/checkout/workflow.rs"]
mod workflow;

use orch_runtime::prelude::*;
use orch_runtime::testing::{MockEntry, TestRuntime, check_recovery, replay};
use serde_json::json;
use workflow::{
    Charge, Checkout, CheckoutError, Order, Placed, Reservation, Shipment, charge_payment,
    create_order, record_analytics, release_inventory, reserve_inventory, ship_order,
};

/// Doubles for every service: what the real ones answer, without HTTP.
fn services(decline: bool, analytics_up: bool) -> Vec<MockEntry> {
    vec![
        create_order::mock(|order| {
            let order_ref = format!("ref-{}", order.id);
            async move {
                Ok(Placed {
                    order_ref,
                    total_cents: 2_598,
                })
            }
        }),
        reserve_inventory::mock(|order| {
            let reservation_id = format!("res-{}", order.id);
            async move { Ok(Reservation { reservation_id }) }
        }),
        charge_payment::mock(move |_, amount_cents| async move {
            if decline {
                Err(StepError::permanent("card declined"))
            } else {
                Ok(Charge {
                    charge_id: "ch-1".into(),
                    amount_cents,
                })
            }
        }),
        release_inventory::mock(|_, _| async { Ok(json!({ "released": true })) }),
        ship_order::mock(|order, _| {
            let tracking = format!("track-{}", order.id);
            async move { Ok(Shipment { tracking }) }
        }),
        record_analytics::mock(move |_, _| async move {
            if analytics_up {
                Ok(())
            } else {
                Err(StepError::retryable("analytics: 503"))
            }
        }),
    ]
}

fn order(n: u64) -> Order {
    Order::demo(n)
}

#[tokio::test]
async fn a_good_card_completes_and_every_service_is_called_once() {
    let mut b = TestRuntime::builder();
    for m in services(false, true) {
        b = b.mock(m);
    }
    let t = b.build().await.expect("test runtime");
    let run = t
        .start_with_id(Checkout, "order-1", order(1))
        .await
        .expect("start");
    let receipt = run.result().await.expect("result").expect("completed");
    assert_eq!(receipt.tracking, "track-order-1");
    assert_eq!(receipt.charge.amount_cents, 2_598);
    let h = t.history("order-1").await.expect("history");
    h.assert_status(Status::Completed);
    h.assert_steps(&[
        "create_order",
        "reserve_inventory",
        "charge_payment",
        "ship_order",
        "record_analytics",
    ]);
    for step in [
        "create_order",
        "reserve_inventory",
        "charge_payment",
        "ship_order",
    ] {
        assert_eq!(t.calls(step), 1, "{step}");
    }
    assert_eq!(t.calls("release_inventory"), 0);
}

#[tokio::test]
async fn a_declined_card_releases_the_reservation_and_is_not_retried() {
    let mut b = TestRuntime::builder();
    for m in services(true, true) {
        b = b.mock(m);
    }
    let t = b.build().await.expect("test runtime");
    let run = t.start(Checkout, order(7)).await.expect("start");
    let out = run.result().await.expect("result");
    assert!(matches!(out, Err(CheckoutError::Declined(_))), "{out:?}");
    let h = t.history(run.id()).await.expect("history");
    h.assert_status(Status::Failed);
    h.assert_attempts("charge_payment", 1);
    assert_eq!(t.calls("release_inventory"), 1);
    assert_eq!(t.calls("ship_order"), 0);
}

#[tokio::test]
async fn an_analytics_outage_never_blocks_checkout() {
    let mut b = TestRuntime::builder();
    for m in services(false, false) {
        b = b.mock(m);
    }
    let t = b.build().await.expect("test runtime");
    let run = t.start(Checkout, order(2)).await.expect("start");
    assert!(run.result().await.expect("result").is_ok());
    let h = t.history(run.id()).await.expect("history");
    h.assert_attempts("record_analytics", 3);
    assert_eq!(h.errors_of("record_analytics").len(), 3);
}

#[tokio::test]
async fn a_flaky_shipping_service_is_retried_with_backoff_in_virtual_time() {
    let mut b = TestRuntime::builder();
    for m in services(false, true)
        .into_iter()
        .filter(|m| m.name() != "ship_order")
    {
        b = b.mock(m);
    }
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let seen = attempts.clone();
    let t = b
        .mock(ship_order::mock(move |order, _| {
            let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let tracking = format!("track-{}", order.id);
            async move {
                if n < 2 {
                    Err(StepError::retryable("shipping: 503"))
                } else {
                    Ok(Shipment { tracking })
                }
            }
        }))
        .build()
        .await
        .expect("test runtime");
    let before = t.now();
    let run = t.start(Checkout, order(3)).await.expect("start");
    let receipt = run.result().await.expect("result").expect("completed");
    assert_eq!(receipt.tracking, "track-order-3");
    let h = t.history(run.id()).await.expect("history");
    h.assert_attempts("ship_order", 3);
    assert_eq!(
        h.errors_of("ship_order"),
        ["shipping: 503", "shipping: 503"]
    );
    // Exponential backoff from 50 ms: 50 + 100 ms of virtual time went by.
    let waited = t.now().duration_since(before).expect("time moves forward");
    assert!(
        waited >= std::time::Duration::from_millis(150),
        "{waited:?}"
    );
}

#[tokio::test]
async fn checkout_recovers_from_a_crash_after_any_checkpoint() {
    for decline in [false, true] {
        let report = check_recovery(Checkout, order(if decline { 7 } else { 4 }))
            .mocks(services(decline, true))
            .run()
            .await
            .unwrap_or_else(|e| panic!("decline={decline}: {e}"));
        // Status entries, steps and the background step: one crash point after each.
        assert_eq!(report.crash_points, report.journal.len() + 1);
        assert!(report.crash_points >= 8, "{}", report.crash_points);
    }
}

#[tokio::test]
async fn an_exported_in_flight_checkout_replays_against_this_code() {
    let mut b = TestRuntime::builder();
    for m in services(false, true)
        .into_iter()
        .filter(|m| m.name() != "ship_order")
    {
        b = b.mock(m);
    }
    // Shipping never answers: the instance stays in flight after charging.
    let t = b
        .mock(ship_order::mock(|_, _| std::future::pending()))
        .build()
        .await
        .expect("test runtime");
    let run = t
        .start_with_id(Checkout, "order-5", order(5))
        .await
        .expect("start");
    t.settle().await;
    assert_eq!(run.status().await.expect("status"), Status::Running);
    let export = t.export("order-5").await.expect("export");

    let report = replay(&export).await.expect("compatible");
    assert!(!report.finished);
    assert!(report.replayed >= 6, "{report:?}");

    // The same export with the order of two steps swapped is refused, naming the seq.
    let tampered = export.replacen("\"reserve_inventory\"", "\"reserve_stock\"", 1);
    let err = replay(&tampered).await.expect_err("incompatible");
    let msg = err.to_string();
    assert!(msg.contains("recorded step `reserve_stock`"), "{msg}");
    assert!(msg.contains("now calls step `reserve_inventory`"), "{msg}");
}

#[test]
fn the_drawing_in_the_readme_is_current() {
    let registry = orch_runtime::workflow::Registry::collect().expect("registry");
    let svg = registry.get("checkout").expect("checkout").drawing().svg();
    assert!(
        svg == include_str!("../docs/checkout.svg"),
        "docs/checkout.svg is stale: cargo run --example graph -- checkout svg > docs/checkout.svg"
    );
}
