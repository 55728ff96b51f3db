//! Confirmation emails through SMTP (`--smtp-url`), received by minimal SMTP servers
//! on port-0 sockets: a working one, one that refuses the first sessions, and one
//! that stalls.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::support::{System, emails, events_of, eventually};

/// Accepts SMTP sessions and keeps each message's DATA. The first `refuse` sessions
/// are turned away with `421` (the server is busy), as a real server does under load.
async fn fake_smtp_server(refuse: usize) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("smtp://{}", listener.local_addr().expect("addr"));
    let inbox = Arc::new(Mutex::new(Vec::new()));
    let received = inbox.clone();
    tokio::spawn(async move {
        let mut sessions = 0;
        while let Ok((socket, _)) = listener.accept().await {
            sessions += 1;
            if sessions <= refuse {
                let mut socket = socket;
                let _ = socket.write_all(b"421 too busy, try later\r\n").await;
                continue;
            }
            let inbox = inbox.clone();
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                write.write_all(b"220 fake ESMTP\r\n").await.ok()?;
                let mut data: Option<String> = None;
                while let Some(line) = lines.next_line().await.ok()? {
                    if let Some(message) = data.as_mut() {
                        if line == "." {
                            let message = data.take().unwrap_or_default();
                            inbox.lock().ok()?.push(message);
                            write.write_all(b"250 queued\r\n").await.ok()?;
                        } else {
                            message.push_str(&line);
                            message.push('\n');
                        }
                        continue;
                    }
                    let verb = line
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" | "HELO" => b"250 fake\r\n",
                        "DATA" => {
                            data = Some(String::new());
                            b"354 go ahead\r\n"
                        }
                        "QUIT" => {
                            write.write_all(b"221 bye\r\n").await.ok()?;
                            return Some(());
                        }
                        _ => b"250 OK\r\n",
                    };
                    write.write_all(reply).await.ok()?;
                }
                Some(())
            });
        }
    });
    (url, received)
}

#[tokio::test]
async fn confirmation_emails_go_through_smtp_when_a_server_is_configured() {
    let (smtp_url, inbox) = fake_smtp_server(0).await;
    let sys = System::start_configured(|c| c.smtp_url = Some(smtp_url)).await;
    let kettle = sys.add_product("Kettle").await;
    sys.set_price(&kettle, 1999, "EUR").await;
    let placed = sys.place_order("hugo", &[(&kettle, 1)]).await;
    assert_eq!(placed.status, StatusCode::CREATED);
    let order_id = placed.body["order_id"].as_str().expect("id").to_owned();

    let message = eventually("the email at the SMTP server", || async {
        inbox
            .lock()
            .ok()?
            .iter()
            .find(|m| m.contains(&order_id))
            .cloned()
    })
    .await;
    assert!(message.contains("To: hugo@example.com"), "{message}");
    assert!(message.contains("1 x Kettle at 19.99 EUR"), "{message}");
    eventually("OrderConfirmationSent", || async {
        let sent = events_of(&sys.http, &sys.sales.base, "OrderConfirmationSent").await;
        (sent.len() == 1).then_some(())
    })
    .await;
    assert!(
        emails(&sys.mail_dir()).is_empty(),
        "no mail file when SMTP is configured"
    );
    sys.stop().await;
}

#[tokio::test]
async fn a_refused_email_is_retried_until_the_server_takes_it_and_confirmed_once() {
    let (smtp_url, inbox) = fake_smtp_server(2).await;
    let sys = System::start_configured(|c| c.smtp_url = Some(smtp_url)).await;
    let kettle = sys.add_product("Kettle").await;
    sys.set_price(&kettle, 1999, "EUR").await;
    let placed = sys.place_order("ines", &[(&kettle, 1)]).await;
    assert_eq!(placed.status, StatusCode::CREATED);
    let order_id = placed.body["order_id"].as_str().expect("id").to_owned();
    eventually("the email after two refusals", || async {
        inbox
            .lock()
            .ok()?
            .iter()
            .any(|m| m.contains(&order_id))
            .then_some(())
    })
    .await;
    eventually("OrderConfirmationSent", || async {
        let sent = events_of(&sys.http, &sys.sales.base, "OrderConfirmationSent").await;
        (sent.len() == 1).then_some(())
    })
    .await;
    // Nothing more arrives later: one email, one event.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(inbox.lock().expect("inbox").len(), 1);
    assert_eq!(
        events_of(&sys.http, &sys.sales.base, "OrderConfirmationSent")
            .await
            .len(),
        1
    );
    sys.stop().await;
}

/// Accepts connections and never says a word: an SMTP server that hangs. Returns its
/// URL and how many connections it has accepted.
async fn stalling_smtp_server() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("smtp://{}", listener.local_addr().expect("addr"));
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            open.push(socket);
        }
    });
    (url, accepted)
}

#[tokio::test]
async fn a_stalling_mail_server_does_not_slow_down_placing_orders() {
    let (smtp_url, accepted) = stalling_smtp_server().await;
    let sys = System::start_configured(|c| c.smtp_url = Some(smtp_url)).await;
    let kettle = sys.add_product("Kettle").await;
    sys.set_price(&kettle, 1999, "EUR").await;
    let first = sys.place_order("jon", &[(&kettle, 1)]).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let first_id = first.body["order_id"].as_str().expect("id").to_owned();
    eventually(
        "the mailer to be stuck talking to the mail server",
        || async { (accepted.load(Ordering::SeqCst) > 0).then_some(()) },
    )
    .await;

    // While the send hangs, orders are accepted at once. (When the send held the
    // database's write lock, each of these waited for the 10 s busy timeout.)
    for quantity in 1..=3 {
        let started = Instant::now();
        let placed = sys.place_order("jon", &[(&kettle, quantity)]).await;
        let took = started.elapsed();
        assert_eq!(placed.status, StatusCode::CREATED, "{:?}", placed.body);
        assert!(
            took < Duration::from_secs(5),
            "POST /orders took {took:?} while the mail server stalled"
        );
    }
    let order = sys
        .send(
            reqwest::Method::GET,
            &format!("{}/orders/{first_id}", sys.sales.base),
            None,
        )
        .await;
    assert_eq!(order.body["confirmation_sent_at"], serde_json::Value::Null);
    assert!(
        events_of(&sys.http, &sys.sales.base, "OrderConfirmationSent")
            .await
            .is_empty(),
        "nothing was confirmed: no email went out"
    );
    // Shutting down does not wait for the hanging send.
    sys.stop().await;
}
