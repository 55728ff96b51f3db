//! A made-up order history and the two upstream feeds it is published on.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use uuid::Uuid;

use feed::testing::{feed_events, of_type};
use kit::testing::{Producer, Running, client, init_log};

/// Upstream sales and shipping, and folders for loyalties.
pub(crate) struct System {
    pub(crate) sales: Producer,
    pub(crate) shipping: Producer,
}

impl System {
    pub(crate) async fn new() -> Self {
        init_log();
        Self {
            sales: Producer::start("sales").await,
            shipping: Producer::start("shipping").await,
        }
    }

    pub(crate) fn config(&self, data: &tempfile::TempDir) -> loyalty::Config {
        loyalty::Config {
            args: kit::ServiceArgs::new(data.path()),
            sales_feed: self.sales.feed_url(),
            shipping_feed: self.shipping.feed_url(),
        }
    }

    pub(crate) async fn accept(&self, order: &Order) {
        let data = json!({
            "order_id": order.id, "customer_id": order.customer, "email": "c@example.com",
            "lines": [{"product_id": Uuid::from_u128(1), "quantity": 1, "unit_price_cents": order.total_cents}],
            "total_cents": order.total_cents, "currency": "EUR",
        });
        self.sales
            .append(&format!("order-{}", order.id), "OrderAccepted", data)
            .await;
    }

    pub(crate) async fn ship(&self, order: &Order) {
        let data = json!({"order_id": order.id, "customer_id": order.customer, "total_weight_grams": 500, "parcels": 1});
        self.shipping
            .append(&format!("order-{}", order.id), "OrderShipped", data)
            .await;
    }

    pub(crate) async fn heads(&self) -> [(&'static str, u64); 2] {
        [
            ("loyalty<-sales", self.sales.head().await),
            ("loyalty<-shipping", self.shipping.head().await),
        ]
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Order {
    pub(crate) id: Uuid,
    pub(crate) customer: String,
    pub(crate) total_cents: i64,
    pub(crate) shipped: bool,
}

/// A small deterministic generator (PCG-style LCG), so a failure can be replayed.
pub(crate) struct Lcg(u64);

impl Lcg {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// `orders_per_customer.len()` customers with that many orders each, in a shuffled
/// order; most are shipped. `big` orders of the last customer total 250 000 cents.
pub(crate) fn history(rng: &mut Lcg, orders_per_customer: &[usize]) -> Vec<Order> {
    // Sales takes UUIDs and tokens alike as customer ids.
    let customers: Vec<String> = (0..orders_per_customer.len())
        .map(|c| {
            if c % 2 == 0 {
                Uuid::new_v4().to_string()
            } else {
                format!("shopper-{c}")
            }
        })
        .collect();
    let mut orders = Vec::new();
    for (c, n) in orders_per_customer.iter().enumerate() {
        for _ in 0..*n {
            orders.push(Order {
                id: Uuid::new_v4(),
                customer: customers[c].clone(),
                total_cents: 500 + rng.below(39_500) as i64,
                shipped: rng.below(10) != 0,
            });
        }
    }
    if let Some(last) = orders.last_mut() {
        last.total_cents = 250_000;
        last.shipped = true;
    }
    for i in (1..orders.len()).rev() {
        orders.swap(i, rng.below(i as u64 + 1) as usize);
    }
    orders
}

/// Publishes `orders` on the two feeds with the interleavings a live system shows:
/// most orders ship a few orders after their acceptance, some ship in the same
/// breath, and some `OrderShipped` are even published before the `OrderAccepted`
/// (what a loyalty whose sales subscription lags sees).
pub(crate) async fn publish(system: &System, rng: &mut Lcg, orders: &[Order]) {
    let mut to_ship: Vec<&Order> = Vec::new();
    for (i, order) in orders.iter().enumerate() {
        match (order.shipped, rng.below(5)) {
            (true, 0) => {
                system.ship(order).await;
                system.accept(order).await;
            }
            (true, 1) => {
                system.accept(order).await;
                system.ship(order).await;
            }
            (true, _) => {
                system.accept(order).await;
                to_ship.push(order);
            }
            (false, _) => system.accept(order).await,
        }
        if i % 3 == 0 && !to_ship.is_empty() {
            let next = to_ship.remove(rng.below(to_ship.len() as u64) as usize);
            system.ship(next).await;
        }
        if i % 10 == 0 {
            // Let a loyalty that runs alongside catch up now and then.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    for order in to_ship {
        system.ship(order).await;
    }
}

/// The tier each customer should have, computed from the history directly.
pub(crate) fn expected_tiers(orders: &[Order]) -> BTreeMap<String, &'static str> {
    let mut records: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for o in orders {
        let r = records.entry(o.customer.clone()).or_default();
        if o.shipped {
            r.0 += 1;
            r.1 += o.total_cents;
        }
    }
    records
        .into_iter()
        .map(|(c, (n, cents))| {
            let tier = if n >= 10 || cents >= 200_000 {
                "gold"
            } else if n >= 3 || cents >= 50_000 {
                "silver"
            } else {
                "bronze"
            };
            (c, tier)
        })
        .collect()
}

/// `GET /customers/{id}` without the time of the last change.
pub(crate) async fn customer(app: &Running, id: &str) -> Value {
    let (status, mut body) = app.get(&format!("/customers/{id}")).await;
    assert_eq!(status, 200, "customer {id}: {body}");
    if let Some(o) = body.as_object_mut() {
        o.remove("updated_at");
    }
    body
}

/// The `CustomerTierChanged` events of a loyalty's feed, per customer, in order: (id,
/// data).
pub(crate) async fn tier_changes(app: &Running) -> BTreeMap<String, Vec<(Uuid, Value)>> {
    let events = feed_events(&client(), &app.feed_url()).await;
    let mut per_customer: BTreeMap<String, Vec<(Uuid, Value)>> = BTreeMap::new();
    for e in of_type(&events, "CustomerTierChanged") {
        let customer = e.data["customer_id"]
            .as_str()
            .expect("customer_id")
            .to_owned();
        assert_eq!(e.stream.as_str(), format!("customer-{customer}"));
        per_customer
            .entry(customer)
            .or_default()
            .push((e.id, e.data.clone()));
    }
    per_customer
}
