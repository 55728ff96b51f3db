use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{System, emails, events_of, eventually};

#[tokio::test]
async fn an_accepted_order_is_published_with_its_prices_and_confirmed_by_email() {
    let sys = System::start().await;
    let kettle = sys.add_product("Kettle").await;
    let teapot = sys.add_product("Teapot").await;
    sys.set_price(&kettle, 1999, "EUR").await;
    sys.set_price(&teapot, 1250, "EUR").await;

    let placed = sys
        .place_order("alice", &[(&kettle, 2), (&teapot, 1)])
        .await;
    assert_eq!(placed.status, StatusCode::CREATED, "{:?}", placed.body);
    let order_id = placed.body["order_id"]
        .as_str()
        .expect("order_id")
        .to_owned();
    assert_eq!(
        placed.header("location"),
        format!("{}/orders/{order_id}", sys.sales.base)
    );
    assert_eq!(placed.body["total_cents"], 2 * 1999 + 1250);

    let prices = events_of(&sys.http, &sys.sales.base, "PriceChanged").await;
    assert_eq!(prices.len(), 2);
    assert_eq!(prices[0].stream.as_str(), format!("price-{kettle}"));
    assert_eq!(
        prices[0].data,
        json!({ "product_id": kettle, "unit_price_cents": 1999, "currency": "EUR" })
    );

    let accepted = events_of(&sys.http, &sys.sales.base, "OrderAccepted").await;
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].stream.as_str(), format!("order-{order_id}"));
    assert_eq!(
        accepted[0].data,
        json!({
            "order_id": order_id,
            "customer_id": "alice",
            "email": "alice@example.com",
            "lines": [
                { "product_id": kettle, "quantity": 2, "unit_price_cents": 1999 },
                { "product_id": teapot, "quantity": 1, "unit_price_cents": 1250 }
            ],
            "total_cents": 5248,
            "currency": "EUR"
        })
    );

    let email = sys.email_for(&order_id).await;
    assert!(email.contains("To: alice@example.com"), "{email}");
    assert!(
        email.contains("2 x Kettle at 19.99 EUR = 39.98 EUR"),
        "{email}"
    );
    assert!(email.contains("1 x Teapot"), "{email}");
    assert!(email.contains("Total: 52.48 EUR"), "{email}");

    let sent = eventually("OrderConfirmationSent", || async {
        let sent = events_of(&sys.http, &sys.sales.base, "OrderConfirmationSent").await;
        (!sent.is_empty()).then_some(sent)
    })
    .await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].stream.as_str(), format!("order-{order_id}"));
    assert_eq!(
        sent[0].data,
        json!({ "order_id": order_id, "email": "alice@example.com" })
    );

    let order = sys
        .send(
            Method::GET,
            &format!("{}/orders/{order_id}", sys.sales.base),
            None,
        )
        .await;
    assert_eq!(order.status, StatusCode::OK);
    assert_eq!(order.body["total_cents"], 5248);
    assert!(
        order.body["confirmation_sent_at"].is_string(),
        "{:?}",
        order.body
    );
    let price = sys
        .send(
            Method::GET,
            &format!("{}/prices/{teapot}", sys.sales.base),
            None,
        )
        .await;
    assert_eq!(price.body["unit_price_cents"], 1250);
    sys.stop().await;
}

#[tokio::test]
async fn a_product_renamed_in_the_catalog_shows_its_new_name_in_later_emails() {
    let sys = System::start().await;
    let kettle = sys.add_product("Kettle").await;
    sys.set_price(&kettle, 1999, "EUR").await;
    let first = sys.place_order("bob", &[(&kettle, 1)]).await;
    let first_id = first.body["order_id"].as_str().expect("id").to_owned();
    let first_email = sys.email_for(&first_id).await;
    assert!(first_email.contains("1 x Kettle at"), "{first_email}");

    sys.rename_product(&kettle, "Electric kettle").await;
    sys.wait_for_replica().await;
    let second = sys.place_order("bob", &[(&kettle, 3)]).await;
    assert_eq!(second.status, StatusCode::CREATED);
    let second_id = second.body["order_id"].as_str().expect("id").to_owned();
    let second_email = sys.email_for(&second_id).await;
    assert!(
        second_email.contains("3 x Electric kettle at"),
        "{second_email}"
    );
    assert_eq!(emails(&sys.mail_dir()).len(), 2);
    sys.stop().await;
}

#[tokio::test]
async fn a_price_change_is_published_once_and_used_by_later_orders() {
    let sys = System::start().await;
    let kettle = sys.add_product("Kettle").await;
    sys.set_price(&kettle, 1000, "EUR").await;
    let same = sys.put_price(&kettle, 1000, "EUR").await;
    assert_eq!(same.status, StatusCode::OK);
    assert_eq!(
        events_of(&sys.http, &sys.sales.base, "PriceChanged")
            .await
            .len(),
        1,
        "an unchanged price is no event"
    );
    let changed = sys.put_price(&kettle, 1500, "USD").await;
    assert_eq!(changed.status, StatusCode::OK);
    // Like every command, it names the resource it changed, and that URL reads it.
    let location = changed.header("location").to_owned();
    assert_eq!(location, format!("{}/prices/{kettle}", sys.sales.base));
    let read = sys.send(Method::GET, &location, None).await;
    assert_eq!(read.body["unit_price_cents"], 1500);
    let prices = events_of(&sys.http, &sys.sales.base, "PriceChanged").await;
    assert_eq!(prices.len(), 2);
    assert_eq!(prices[1].stream_version, 2);
    let order = sys.place_order("carol", &[(&kettle, 2)]).await;
    assert_eq!(order.body["total_cents"], 3000);
    assert_eq!(order.body["currency"], "USD");
    sys.stop().await;
}
