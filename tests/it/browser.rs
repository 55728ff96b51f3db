//! The running system in a real headless Chromium, through the gateway: a person
//! starts at the landing page, goes to a service, its feed head, a sealed page and an
//! event and back, with the mouse and with the keyboard; follows an order on its own
//! page; and watches the head page add an event live. Full-page screenshots land in
//! `<target dir>/screenshots/` for people to look at.

use std::path::PathBuf;
use std::time::Duration;

use crate::support::System;
use crate::webdriver::Browser;

/// `$CARGO_TARGET_DIR/screenshots`, or the workspace's `target/screenshots`.
fn screenshot(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| {
            if t.is_absolute() {
                t
            } else {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(t)
            }
        })
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("screenshots").join(format!("{name}.png"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_person_browses_the_running_system_from_the_landing_page_to_an_event_and_back() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let mut config = retail::Config::new(dir.path());
    // Small pages, so the feeds have sealed pages after a few orders.
    config.page_size = Some(10);
    let sys = System::start(config).await;
    let outcome = tokio::time::timeout(Duration::from_secs(240), browse(&browser, &sys)).await;
    browser.quit().await;
    outcome.expect("the browser walk took longer than four minutes");
    sys.stop().await;
}

async fn browse(b: &Browser, sys: &System) {
    let gw = sys.url.clone();
    let teapot = sys.product("Teapot", 1200, 2500).await;
    let cups = sys.product("Cups", 800, 1800).await;
    let mut orders = Vec::new();
    for i in 0..6 {
        orders.push(
            sys.order(
                if i % 2 == 0 { "ann" } else { "ben" },
                &[(&teapot, 1), (&cups, 2)],
            )
            .await,
        );
    }
    let last = orders.last().expect("orders").clone();
    sys.wait_for_event("shipping", "OrderShipped", &last).await;
    sys.settle().await;
    // sales: 2 prices + 6 accepted + 6 confirmations = 14 events, so 1-10 is sealed.
    assert_eq!(sys.head_position("sales").await, 14);

    // The landing page: every service, a way into each.
    b.goto(&format!("{gw}/")).await;
    assert_eq!(b.text("h1").await, "Retail event feeds");
    assert_eq!(b.eval("return document.documentElement.lang;").await, "en");
    assert_eq!(b.count("ul.cards > li").await, 6);
    assert_eq!(
        b.count("link[rel=alternate][type='application/atom+xml']")
            .await,
        6
    );
    b.screenshot(&screenshot("landing")).await;

    // A service's index: its subscriptions, caught up, their checkpoints linked.
    b.click(&format!("a[href='{gw}/sales/']")).await;
    assert_eq!(b.current_url().await, format!("{gw}/sales/"));
    assert_eq!(b.text("h1").await, "sales service");
    assert!(
        b.text("tr[data-subscription='sales<-catalog']")
            .await
            .contains("caught up")
    );
    assert_eq!(
        b.eval("return document.querySelector('a[rel=home]').href;")
            .await,
        format!("{gw}/")
    );
    b.screenshot(&screenshot("service-index")).await;

    // Its feed head: the newest events, still filling.
    b.click("main a[rel=feed]").await;
    assert_eq!(b.current_url().await, format!("{gw}/sales/feed"));
    assert_eq!(b.text("h1").await, "sales events");
    assert_eq!(b.text(".badge").await, "Head");
    assert_eq!(b.count("#events tbody tr[data-position]").await, 4);
    assert_eq!(b.text("#events tbody tr th a").await, "14", "newest first");
    b.wait_for(
        "const a = document.querySelector('#events .ago'); return a && a.textContent;",
        Duration::from_secs(5),
    )
    .await;
    b.screenshot(&screenshot("head")).await;

    // Older: the sealed page, which never changes.
    b.click("a[rel~=prev-archive]").await;
    assert_eq!(
        b.current_url().await,
        format!("{gw}/sales/feed/archive/1-10")
    );
    assert_eq!(b.text(".badge").await, "Sealed");
    assert!(b.text("#range").await.contains("1–10"));
    assert_eq!(b.count("#events tbody tr[data-position]").await, 10);
    assert!(b.count("#events .j-key").await > 0, "JSON is highlighted");
    b.screenshot(&screenshot("sealed-page")).await;

    // An event on it, then back to the page and back to the head.
    b.click("#events tbody tr[data-position='3'] th a").await;
    assert_eq!(b.current_url().await, format!("{gw}/sales/feed/events/3"));
    assert_eq!(
        b.text("h1").await.split_whitespace().next(),
        Some("OrderAccepted")
    );
    assert!(b.text("dl.facts").await.contains("order-"));
    assert_eq!(
        b.eval("return document.querySelector('a[rel=up]').href;")
            .await,
        format!("{gw}/sales/feed/archive/1-10")
    );
    b.screenshot(&screenshot("event")).await;
    b.back().await;
    assert_eq!(
        b.current_url().await,
        format!("{gw}/sales/feed/archive/1-10")
    );
    assert_eq!(b.text(".badge").await, "Sealed");
    b.back().await;
    assert_eq!(b.current_url().await, format!("{gw}/sales/feed"));

    // The same walk with the keyboard: focus the pager's links and press Enter.
    b.press_enter_on("#pager a[rel~=prev-archive]").await;
    assert_eq!(
        b.current_url().await,
        format!("{gw}/sales/feed/archive/1-10")
    );
    b.press_enter_on("#pager a[rel~=next-archive]").await;
    assert_eq!(b.current_url().await, format!("{gw}/sales/feed"));
    b.press_enter_on("#events tbody tr[data-position='12'] th a")
        .await;
    assert_eq!(b.current_url().await, format!("{gw}/sales/feed/events/12"));
    b.press_enter_on("#pager a[rel=prev]").await;
    assert_eq!(b.current_url().await, format!("{gw}/sales/feed/events/11"));
    b.press_enter_on("a[rel=home]").await;
    assert_eq!(b.current_url().await, format!("{gw}/"));

    // Follow an order from the landing page's form to its own page.
    b.eval(&format!(
        "document.querySelector('input[name=order]').value = '{last}'; document.querySelector('form.order').requestSubmit(); return true;"
    ))
    .await;
    b.wait_for(
        &format!(
            "return location.href === '{gw}/orders/{last}' && document.readyState === 'complete';"
        ),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(b.text("h1").await, format!("Order {last}"));
    assert_eq!(b.count("ol.steps li[data-done=true]").await, 4);
    assert_eq!(b.count("#events tbody tr[data-type]").await, 5);
    b.screenshot(&screenshot("order")).await;
    b.click("ol.steps li[data-step=OrderShipped] a").await;
    assert!(
        b.current_url()
            .await
            .starts_with(&format!("{gw}/shipping/feed/events/"))
    );
    assert!(b.text("h1").await.starts_with("OrderShipped"));

    // Live mode through the gateway: a new order shows up on the open head page.
    b.goto(&format!("{gw}/sales/feed")).await;
    b.eval("window.notReloaded = true; document.getElementById('live-status').dataset.mark = 'kept'; return true;")
        .await;
    b.wait_for(
        "const s = document.getElementById('live-status'); return s.dataset.state === 'on' && s.textContent.length > 0;",
        Duration::from_secs(10),
    )
    .await;
    // Give the script time to be parked in its long poll.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let live = sys.order("cat", &[(&cups, 1)]).await;
    b.wait_for(
        "return document.querySelector('#events tbody tr[data-position=\"15\"]') !== null;",
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(b.eval("return window.notReloaded === true;").await, true);
    assert!(
        b.text("#events tbody tr[data-position='15']")
            .await
            .contains(&live)
    );
    assert!(
        b.text("#range").await.contains("11–1"),
        "{}",
        b.text("#range").await
    );
    // The live region is the element that was there at load, announcing the state.
    assert_eq!(
        b.eval("const s = document.getElementById('live-status'); return s.dataset.mark === 'kept' && s.getAttribute('aria-live');").await,
        "polite"
    );
    b.screenshot(&screenshot("head-live")).await;

    // The same head on a phone-sized screen.
    b.emulate_width(Some(390)).await;
    b.goto(&format!("{gw}/sales/feed")).await;
    b.screenshot(&screenshot("head-phone")).await;
    b.emulate_width(None).await;
}
