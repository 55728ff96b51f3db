//! Confirmation emails.
//!
//! [`Confirmations`] is the handler of sales' subscription to its own feed. For each
//! `OrderAccepted` it composes an email naming the products as the catalog replica
//! knows them *at sending time* (a product renamed before the email goes out shows
//! its new name), sends it, then, in the subscription's transaction, appends
//! `OrderConfirmationSent` and marks the order confirmed.
//!
//! Guarantees:
//! - **Exactly one `OrderConfirmationSent` per order**, even across crashes and
//!   replays: its id is derived from the `OrderAccepted` event's id (UUID v5), so a
//!   second append is a no-op, and it commits together with the subscription's
//!   checkpoint.
//! - **The email itself is sent at least once.** Sending happens before the commit
//!   (a mail server is no transaction participant): a crash after the send and before
//!   the commit sends it again on restart. Each message carries a Message-ID derived
//!   from the order, so a receiving system can drop the duplicate. An order whose
//!   confirmation is already recorded is never mailed again, so a reset checkpoint
//!   (replaying the feed) sends nothing twice.
//!
//! The send runs inside the subscription's write transaction, so a slow SMTP server
//! delays other writers of the sales database for that long (at most lettre's SMTP
//! timeout); the default file transport takes microseconds.

use std::path::PathBuf;

use anyhow::Context as _;
use feed::event::{Event, EventType, NewEvent, now_micros};
use feed::store::{EventLog, Expected};
use feed::subscriber::Handler;
use futures::future::BoxFuture;
use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Body, Mailbox, Message, SinglePart};
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use sqlx::AnyConnection;
use uuid::Uuid;

use crate::orders::{OrderAccepted, stream_of};

/// Where confirmation emails go.
#[derive(Clone)]
pub(crate) struct Mailer {
    transport: Transport,
    from: Mailbox,
}

#[derive(Clone)]
enum Transport {
    /// One `.eml` file per message in a folder.
    File(AsyncFileTransport<Tokio1Executor>),
    /// An SMTP server.
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.transport {
            Transport::File(_) => "file",
            Transport::Smtp(_) => "smtp",
        };
        f.debug_struct("Mailer")
            .field("transport", &kind)
            .field("from", &self.from)
            .finish()
    }
}

impl Mailer {
    /// SMTP when `--smtp-url` is set, else files in `<data-dir>/mail/`.
    pub(crate) fn from_config(config: &crate::Config) -> anyhow::Result<Self> {
        let from: Mailbox = config
            .mail_from
            .parse()
            .with_context(|| format!("--mail-from {:?} is not a mailbox", config.mail_from))?;
        let transport = match &config.smtp_url {
            Some(url) => {
                feed::install_crypto();
                Transport::Smtp(
                    AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                        .context("--smtp-url is not a usable SMTP URL")?
                        .build(),
                )
            }
            None => {
                let dir: PathBuf = config.args.data_dir.join("mail");
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create the mail folder {}", dir.display()))?;
                Transport::File(AsyncFileTransport::new(dir))
            }
        };
        Ok(Self { transport, from })
    }

    async fn send(&self, message: Message) -> anyhow::Result<()> {
        match &self.transport {
            Transport::File(t) => {
                t.send(message).await.context("writing the email file")?;
            }
            Transport::Smtp(t) => {
                t.send(message).await.context("sending the email by SMTP")?;
            }
        }
        Ok(())
    }
}

/// The mailer subscription's handler (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct Confirmations {
    log: EventLog,
    mailer: Mailer,
}

impl Confirmations {
    pub(crate) fn new(log: EventLog, mailer: Mailer) -> Self {
        Self { log, mailer }
    }

    async fn confirm(&self, tx: &mut AnyConnection, event: &Event) -> anyhow::Result<()> {
        let order: OrderAccepted = serde_json::from_value(event.data.clone())
            .context("OrderAccepted does not match the contract")?;
        let recorded: Option<Option<String>> =
            sqlx::query_scalar("SELECT confirmation_sent_at FROM sales_orders WHERE order_id = $1")
                .bind(order.order_id.to_string())
                .fetch_optional(&mut *tx)
                .await?;
        if matches!(recorded, Some(Some(_))) {
            return Ok(());
        }
        let mut items = Vec::with_capacity(order.lines.len());
        for line in &order.lines {
            let name = crate::replica::name_of(tx, &line.product_id.to_string())
                .await?
                .unwrap_or_else(|| format!("product {}", line.product_id));
            items.push(name);
        }
        let to: Mailbox = order
            .email
            .parse()
            .context("OrderAccepted carries an invalid email address")?;
        let message = Message::builder()
            .from(self.mailer.from.clone())
            .to(to)
            .subject(format!("Your order {} is confirmed", order.order_id))
            .message_id(Some(format!("<order-{}@retail.example>", order.order_id)))
            .singlepart(readable_body(render(&order, &items)))
            .context("composing the confirmation email")?;
        self.mailer.send(message).await?;

        let sent = NewEvent::new(
            stream_of(order.order_id),
            EventType::parse("OrderConfirmationSent").expect("a valid event type"),
            serde_json::json!({ "order_id": order.order_id, "email": order.email }),
        )
        .with_id(Uuid::new_v5(&event.id, b"OrderConfirmationSent"))
        .with_metadata(serde_json::json!({ "causation_id": event.id }));
        self.log.append(tx, Expected::Any, &[sent]).await?;
        sqlx::query("UPDATE sales_orders SET confirmation_sent_at = $2 WHERE order_id = $1")
            .bind(order.order_id.to_string())
            .bind(now_micros().to_rfc3339())
            .execute(&mut *tx)
            .await?;
        tracing::info!(order_id = %order.order_id, "order confirmation sent");
        Ok(())
    }
}

impl Handler for Confirmations {
    fn handle<'a>(
        &'a self,
        tx: &'a mut AnyConnection,
        event: &'a Event,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            if event.event_type.as_str() == "OrderAccepted" {
                self.confirm(tx, event).await?;
            }
            Ok(())
        })
    }
}

/// A plain-text part kept readable in the .eml file: 7bit, or 8bit for non-ASCII
/// names (lettre would pick quoted-printable); lettre's own choice when a line is too
/// long for either (76 characters).
fn readable_body(text: String) -> SinglePart {
    let encoding = if text.is_ascii() {
        ContentTransferEncoding::SevenBit
    } else {
        ContentTransferEncoding::EightBit
    };
    let body = Body::new_with_encoding(text, encoding).unwrap_or_else(Body::new);
    SinglePart::builder()
        .header(ContentType::TEXT_PLAIN)
        .body(body)
}

fn money(cents: i64, currency: &str) -> String {
    format!("{}.{:02} {currency}", cents / 100, (cents % 100).abs())
}

/// The plain-text body: one row per line with the product's name.
fn render(order: &OrderAccepted, names: &[String]) -> String {
    let mut body = String::from("Hello,\n\nthank you for your order. We have accepted it:\n\n");
    for (line, name) in order.lines.iter().zip(names) {
        let line_total = line.unit_price_cents.saturating_mul(line.quantity);
        body.push_str(&format!(
            "  {} x {name} at {} = {}\n",
            line.quantity,
            money(line.unit_price_cents, &order.currency),
            money(line_total, &order.currency)
        ));
    }
    body.push_str(&format!(
        "\nTotal: {}\n\nOrder number: {}\n\nRetail Sales\n",
        money(order.total_cents, &order.currency),
        order.order_id
    ));
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orders::Line;

    #[test]
    fn the_email_names_each_product_with_its_quantity_and_prices() {
        let order = OrderAccepted {
            order_id: Uuid::nil(),
            customer_id: "alice".into(),
            email: "alice@example.com".into(),
            lines: vec![
                Line {
                    product_id: Uuid::nil(),
                    quantity: 2,
                    unit_price_cents: 1999,
                },
                Line {
                    product_id: Uuid::max(),
                    quantity: 1,
                    unit_price_cents: 5,
                },
            ],
            total_cents: 4003,
            currency: "EUR".into(),
        };
        let body = render(&order, &["Kettle".into(), "Spoon".into()]);
        assert!(
            body.contains("2 x Kettle at 19.99 EUR = 39.98 EUR"),
            "{body}"
        );
        assert!(body.contains("1 x Spoon at 0.05 EUR = 0.05 EUR"), "{body}");
        assert!(body.contains("Total: 40.03 EUR"), "{body}");
    }
}
