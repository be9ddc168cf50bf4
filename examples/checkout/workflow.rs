//! The checkout workflow and its steps: one HTTP call to a service each.

use orch_runtime::prelude::*;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::services::{CATALOG, DECLINED_CARD};

/// The card that pays.
pub const GOOD_CARD: &str = "4242-4242-4242-4242";

/// One line of an order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LineItem {
    /// Product.
    pub sku: String,
    /// How many.
    pub qty: u32,
}

/// What the customer asked for: the workflow's input, stored with the instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Order {
    /// `order-<n>`; also the workflow instance id.
    pub id: String,
    /// Who buys.
    pub customer: String,
    /// What they buy.
    pub items: Vec<LineItem>,
    /// How they pay.
    pub card: String,
    /// Where it goes.
    pub address: String,
    /// Charge the card through the `payments` queue, by a payment worker that may run
    /// anywhere (`checkout --payment-queue`), instead of in the process that drives the
    /// order. Part of the input, so an order charges the same way however often it is
    /// replayed or resumed, by whichever node and flags.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub payment_queue: bool,
}

impl Order {
    /// Order number `n` of the demo batch: the same every run, so a rerun of a batch starts
    /// the very same orders. Every seventh card is declined.
    pub fn demo(n: u64) -> Order {
        let pick = |i: u64| CATALOG[(i % CATALOG.len() as u64) as usize].0.to_string();
        let mut items = vec![LineItem {
            sku: pick(n),
            qty: 1 + (n % 3) as u32,
        }];
        if n.is_multiple_of(2) {
            items.push(LineItem {
                sku: pick(n / 2 + 1),
                qty: 1,
            });
        }
        Order {
            id: format!("order-{n}"),
            customer: format!("customer-{}", n % 11),
            items,
            card: if n.is_multiple_of(7) {
                DECLINED_CARD
            } else {
                GOOD_CARD
            }
            .to_string(),
            address: format!("{n} Loopback Lane, 127.0.0.1"),
            payment_queue: false,
        }
    }
}

/// The orders service's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Placed {
    /// The order's reference in the orders service.
    pub order_ref: String,
    /// What it costs.
    pub total_cents: u64,
}

/// The inventory service's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Reservation {
    /// Identifies the reservation (to release it).
    pub reservation_id: String,
}

/// A charge as the payment service takes it (`POST <payment service>/charges`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChargeRequest {
    /// The order it pays for.
    pub order: String,
    /// The card to charge.
    pub card: String,
    /// How much.
    pub amount_cents: u64,
}

impl ChargeRequest {
    /// The charge of `amount_cents` for `order`.
    pub fn of(order: &Order, amount_cents: u64) -> ChargeRequest {
        ChargeRequest {
            order: order.id.clone(),
            card: order.card.clone(),
            amount_cents,
        }
    }
}

/// The payment service's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Charge {
    /// Identifies the charge.
    pub charge_id: String,
    /// What was charged.
    pub amount_cents: u64,
}

/// The shipping service's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Shipment {
    /// Where to follow the parcel.
    pub tracking: String,
}

/// A finished checkout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Receipt {
    /// The order.
    pub order: String,
    /// Its reference in the orders service.
    pub order_ref: String,
    /// The charge.
    pub charge: Charge,
    /// The parcel.
    pub tracking: String,
}

/// Why a checkout did not complete.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema, thiserror::Error)]
pub enum CheckoutError {
    /// The card was declined; the reservation was released.
    #[error("card declined ({0}); reservation released")]
    Declined(String),
    /// A service kept failing (or answered that the request cannot work).
    #[error("{0}")]
    Service(String),
}

impl From<StepError> for CheckoutError {
    fn from(e: StepError) -> Self {
        CheckoutError::Service(e.message)
    }
}

/// The phases an order goes through, as shown by `orch::set_status` (the custom status).
pub const PHASES: [&str; 6] = [
    "creating order",
    "reserving inventory",
    "charging payment",
    "releasing inventory",
    "shipping",
    "recording analytics",
];

/// Checks out one order: create it, reserve stock, charge the card (releasing the stock if
/// the card is declined), ship, and record analytics in the background.
#[workflow]
pub async fn checkout(order: Order) -> Result<Receipt, CheckoutError> {
    // Searchable in the UI and API ("orders of customer-3", "items ordered today").
    orch::set_attribute("customer", &order.customer).await;
    orch::set_attribute("items", order.items.iter().map(|i| i.qty).sum::<u32>()).await;
    orch::set_status(PHASES[0]).await;
    let placed = create_order(&order).await?;
    orch::set_attribute("total_cents", placed.total_cents).await;

    orch::set_status(PHASES[1]).await;
    let reservation = reserve_inventory(&order).await?;

    orch::set_status(PHASES[2]).await;
    let charged = if order.payment_queue {
        // A payment worker charges the card; its task carries all it needs to.
        let charge = ChargeRequest::of(&order, placed.total_cents);
        charge_payment_queued(service_url("payment"), charge).await
    } else {
        charge_payment(&order, placed.total_cents).await
    };
    let charge = match charged {
        Ok(charge) => charge,
        Err(failure) => {
            // Compensation: the goods will not ship, so give the stock back.
            orch::set_status(PHASES[3]).await;
            release_inventory(&order, &reservation).await?;
            orch::set_status(PHASES[5]).await;
            orch::background(record_analytics(order.id.clone(), "checkout_failed"));
            return Err(if failure.permanent {
                CheckoutError::Declined(failure.message)
            } else {
                CheckoutError::Service(failure.message)
            });
        }
    };

    orch::set_status(PHASES[4]).await;
    let shipment = ship_order(&order, &placed.order_ref).await?;

    // Optional work: if analytics is down the checkout still completes (the engine waits for
    // the background step to settle, and records its failure, before finishing).
    orch::set_status(PHASES[5]).await;
    orch::background(record_analytics(order.id.clone(), "checkout_completed"));
    Ok(Receipt {
        order: order.id,
        order_ref: placed.order_ref,
        charge,
        tracking: shipment.tracking,
    })
}

/// Creates the order in the orders service, which prices it.
#[step(retry = Retry::exponential(ms(50)).max_attempts(5), timeout = secs(30))]
pub async fn create_order(order: &Order) -> Result<Placed, StepError> {
    let body = json!({ "order": order.id, "customer": order.customer, "items": order.items });
    call("orders", "/orders", body).await
}

/// Reserves the order's items.
#[step(retry = Retry::exponential(ms(50)).max_attempts(5), timeout = secs(30))]
pub async fn reserve_inventory(order: &Order) -> Result<Reservation, StepError> {
    let body = json!({ "order": order.id, "items": order.items });
    call("inventory", "/reservations", body).await
}

/// Gives a reservation back (compensation).
#[step(retry = Retry::exponential(ms(50)).max_attempts(5), timeout = secs(30))]
pub async fn release_inventory(
    order: &Order,
    reservation: &Reservation,
) -> Result<Value, StepError> {
    let body = json!({ "order": order.id, "reservation_id": reservation.reservation_id });
    call("inventory", "/releases", body).await
}

/// Charges the card; a declined card is a permanent error (no retry).
#[step(retry = Retry::exponential(ms(50)).max_attempts(5), timeout = secs(30))]
pub async fn charge_payment(order: &Order, amount_cents: u64) -> Result<Charge, StepError> {
    let body = json!({ "order": order.id, "card": order.card, "amount_cents": amount_cents });
    call("payment", "/charges", body).await
}

/// Charges the card as a task on queue `payments`, served by a payment worker
/// (`examples/workers/python/payment_worker.py`, or any process with this body): the task's
/// input is `{"payment_url": …, "charge": {"order", "card", "amount_cents"}}` and its
/// idempotency key, so the worker can `POST <payment_url>/charges` itself. A worker answers
/// the [`Charge`], or fails: permanently for a declined card (no retry), retryably for a
/// service or network failure. No timeout: an order waits for a worker as long as it takes
/// (a worker that dies loses its lease, and the task goes to the next one).
#[step(queue = "payments", retry = Retry::exponential(ms(50)).max_attempts(5))]
pub async fn charge_payment_queued(
    payment_url: String,
    charge: ChargeRequest,
) -> Result<Charge, StepError> {
    let body = serde_json::to_value(&charge)
        .map_err(|e| StepError::permanent(format!("payment: cannot encode the charge: {e}")))?;
    post("payment", &payment_url, "/charges", body).await
}

/// Ships the order.
#[step(retry = Retry::exponential(ms(50)).max_attempts(5), timeout = secs(30))]
pub async fn ship_order(order: &Order, order_ref: &str) -> Result<Shipment, StepError> {
    let body = json!({ "order": order.id, "order_ref": order_ref, "address": order.address });
    call("shipping", "/shipments", body).await
}

/// Records an analytics event: a short retry, then it gives up (in the background).
#[step(retry = Retry::fixed(ms(20)).max_attempts(3), timeout = secs(30))]
pub async fn record_analytics(order: String, event: &'static str) -> Result<(), StepError> {
    let _: Value = call(
        "analytics",
        "/events",
        json!({ "order": order, "event": event }),
    )
    .await?;
    Ok(())
}

/// Where the services listen, and the HTTP client that calls them.
pub struct Endpoints {
    client: reqwest::Client,
    urls: Vec<(&'static str, String)>,
    /// Sent with every request as `orch-node`: which node called (the service log says).
    node: reqwest::header::HeaderValue,
    /// Requests sent to each service, in `urls` order.
    sent: Vec<AtomicU64>,
}

static ENDPOINTS: OnceLock<Endpoints> = OnceLock::new();

/// Tells the steps where the services are, and the node id to tell them. Must happen before
/// the runtime is built, since building it resumes unfinished orders at once.
pub fn connect(urls: Vec<(&'static str, String)>, node: &str) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(std::time::Duration::from_secs(2))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    // (Node ids hold no control characters, so any of them is a valid header value.)
    let node = reqwest::header::HeaderValue::from_bytes(node.as_bytes())
        .map_err(|e| format!("node id `{node}` cannot be sent in a header: {e}"))?;
    let sent = urls.iter().map(|_| AtomicU64::new(0)).collect();
    ENDPOINTS
        .set(Endpoints {
            client,
            urls,
            node,
            sent,
        })
        .map_err(|_| "the services are connected already".to_string())
}

/// How many requests this process sent to each service (retries and repeats included), by
/// service name.
pub fn requests_sent() -> Vec<(&'static str, u64)> {
    ENDPOINTS.get().map_or_else(Vec::new, |e| {
        e.urls
            .iter()
            .zip(&e.sent)
            .map(|((name, _), n)| (*name, n.load(Ordering::Relaxed)))
            .collect()
    })
}

/// The base URL of `service` (e.g. `http://127.0.0.1:41003`), or an empty string before
/// [`connect`].
pub fn service_url(service: &str) -> String {
    ENDPOINTS
        .get()
        .and_then(|e| e.urls.iter().find(|(name, _)| *name == service))
        .map(|(_, url)| url.clone())
        .unwrap_or_default()
}

/// POSTs `body` to `service` with the step's idempotency key and decodes the answer.
/// Connection failures and 5xx answers are worth retrying; 4xx answers are not.
async fn call<T: DeserializeOwned>(service: &str, path: &str, body: Value) -> Result<T, StepError> {
    let endpoints = ENDPOINTS
        .get()
        .ok_or_else(|| StepError::retryable("the services are not connected yet"))?;
    let base = endpoints
        .urls
        .iter()
        .find(|(name, _)| *name == service)
        .map(|(_, url)| url.clone())
        .ok_or_else(|| StepError::permanent(format!("unknown service `{service}`")))?;
    post(service, &base, path, body).await
}

/// POSTs `body` to `<base><path>` (service `service`, as counted and named in errors) with the
/// step's idempotency key and decodes the answer. Connection failures and 5xx answers are
/// worth retrying; 4xx answers are not.
async fn post<T: DeserializeOwned>(
    service: &str,
    base: &str,
    path: &str,
    body: Value,
) -> Result<T, StepError> {
    let endpoints = ENDPOINTS
        .get()
        .ok_or_else(|| StepError::retryable("the services are not connected yet"))?;
    if let Some(sent) = endpoints
        .urls
        .iter()
        .zip(&endpoints.sent)
        .find(|((name, _), _)| *name == service)
        .map(|(_, sent)| sent)
    {
        sent.fetch_add(1, Ordering::Relaxed);
    }
    let response = endpoints
        .client
        .post(format!("{base}{path}"))
        .header("idempotency-key", orch::idempotency_key())
        .header("orch-node", endpoints.node.clone())
        .json(&body)
        .send()
        .await
        .map_err(|e| StepError::retryable(format!("{service}: {e}")))?;
    let status = response.status();
    if status.is_success() {
        return response
            .json::<T>()
            .await
            .map_err(|e| StepError::retryable(format!("{service}: bad answer: {e}")));
    }
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    let message = answer["error"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("{service} answered {status}"));
    if status.is_client_error() && status.as_u16() != 408 && status.as_u16() != 429 {
        Err(StepError::permanent(message))
    } else {
        Err(StepError::retryable(message))
    }
}
