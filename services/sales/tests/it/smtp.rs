//! Confirmation emails through SMTP (`--smtp-url`), received by a minimal SMTP
//! server on a port-0 socket.

use std::sync::{Arc, Mutex};

use reqwest::StatusCode;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::support::{System, emails, events_of, eventually};

/// Accepts SMTP sessions and keeps each message's DATA.
async fn fake_smtp_server() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("smtp://{}", listener.local_addr().expect("addr"));
    let inbox = Arc::new(Mutex::new(Vec::new()));
    let received = inbox.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
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
    let (smtp_url, inbox) = fake_smtp_server().await;
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
