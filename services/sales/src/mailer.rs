//! Confirmation emails, through an outbox.
//!
//! 1. **Record** ([`Confirmations`], the handler of sales' subscription to its own
//!    feed): for each `OrderAccepted` it composes the email, naming the products as
//!    the catalog replica knows them then, and inserts it into `sales_outbox`, in the
//!    subscription's transaction.
//! 2. **Send** ([`send_confirmations`], a task of its own): takes pending rows, sends
//!    each one *outside any transaction*, and then
//! 3. **Confirm**: in one short transaction appends `OrderConfirmationSent`, sets the
//!    order's `confirmation_sent_at` and marks the row sent.
//!
//! Sending used to happen inside the subscriber's write transaction, so a slow SMTP
//! server held SQLite's write lock and every `POST /orders` waited behind it. Now the
//! only transactions are the two short ones around the send.
//!
//! Guarantees:
//! - **Exactly one `OrderConfirmationSent` per order**, even across crashes, replays
//!   and replicas: its id is derived from the `OrderAccepted` event's id (UUID v5), so
//!   a second append is a no-op; the outbox row is keyed by the order, so a replayed
//!   `OrderAccepted` records nothing new; an order already confirmed is not recorded
//!   again (so a reset checkpoint mails nothing twice).
//! - **The email itself is sent at least once.** A mail server is no transaction
//!   participant: a crash after the send and before step 3 commits sends it again on
//!   restart. Each message carries a Message-ID derived from the order, so a receiving
//!   system can drop the duplicate.
//! - A failed send (server down, refused) stays pending and is retried with an
//!   exponential backoff (1 s doubling up to 5 minutes); the error is logged and kept
//!   in the row. While a sender holds a row it sets a lease (`not_before`), so replicas
//!   sharing one PostgreSQL database do not send the same email at the same time; a
//!   sender that is shut down mid-send gives its lease back, one that is killed leaves
//!   it to expire (the transport's timeout plus a margin).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use feed::db::Database;
use feed::event::{Event, EventType, NewEvent, now_micros};
use feed::store::{EventLog, Expected};
use feed::subscriber::Handler;
use futures::future::BoxFuture;
use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Body, Mailbox, Message, SinglePart};
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use sqlx::AnyConnection;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::orders::{OrderAccepted, stream_of};

/// How long an SMTP conversation may take before it counts as failed.
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the sender looks for pending emails when nothing woke it.
const POLL: Duration = Duration::from_millis(250);
/// Rows taken per look.
const BATCH: i64 = 20;
/// The longest wait between two attempts at one email.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

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
                        .timeout(Some(SMTP_TIMEOUT))
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

    /// How long a sender holds an email it is sending: longer than a send can take.
    fn lease(&self) -> Duration {
        match self.transport {
            Transport::File(_) => Duration::from_secs(10),
            Transport::Smtp(_) => SMTP_TIMEOUT + Duration::from_secs(10),
        }
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

/// The mailer subscription's handler: step 1, recording (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct Confirmations {
    wake: Arc<Notify>,
}

impl Confirmations {
    /// Records into the outbox; `wake` tells the sender there may be work.
    pub(crate) fn new(wake: Arc<Notify>) -> Self {
        Self { wake }
    }

    async fn record(&self, tx: &mut AnyConnection, event: &Event) -> anyhow::Result<()> {
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
        order
            .email
            .parse::<Mailbox>()
            .context("OrderAccepted carries an invalid email address")?;
        sqlx::query(
            "INSERT INTO sales_outbox (order_id, event_id, recipient, subject, body, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(order.order_id.to_string())
        .bind(event.id.to_string())
        .bind(&order.email)
        .bind(format!("Your order {} is confirmed", order.order_id))
        .bind(render(&order, &items))
        .bind(now_micros().to_rfc3339())
        .execute(&mut *tx)
        .await?;
        // Usually the sender wakes after this transaction commits; if it looks too
        // early it finds the row on its next poll.
        self.wake.notify_one();
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
                self.record(tx, event).await?;
            }
            Ok(())
        })
    }
}

/// A pending email as the outbox holds it.
#[derive(Debug)]
struct Pending {
    order_id: String,
    event_id: String,
    recipient: String,
    subject: String,
    body: String,
    attempts: i64,
}

/// Milliseconds since the Unix epoch, `after` from now.
fn epoch_millis(after: Duration) -> i64 {
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_add(after);
    i64::try_from(at.as_millis()).unwrap_or(i64::MAX)
}

/// Steps 2 and 3 (see the module docs), until `shutdown` is cancelled.
pub(crate) async fn send_confirmations(
    db: Database,
    log: EventLog,
    mailer: Mailer,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let sent = match send_pending(&db, &log, &mailer, &shutdown).await {
            Ok(sent) => sent,
            Err(e) => {
                // The database is unavailable: like a subscriber, wait and try again.
                tracing::warn!(error = %format!("{e:#}"), "the mailer cannot read its outbox");
                0
            }
        };
        if sent > 0 {
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = wake.notified() => {}
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Sends what is due now; returns how many emails went out.
async fn send_pending(
    db: &Database,
    log: &EventLog,
    mailer: &Mailer,
    shutdown: &CancellationToken,
) -> anyhow::Result<usize> {
    type Row = (String, String, String, String, String, i64);
    let due: Vec<Row> = sqlx::query_as(
        "SELECT order_id, event_id, recipient, subject, body, attempts FROM sales_outbox \
         WHERE sent_at IS NULL AND not_before <= $1 ORDER BY created_at, order_id LIMIT $2",
    )
    .bind(epoch_millis(Duration::ZERO))
    .bind(BATCH)
    .fetch_all(db.pool())
    .await?;
    let due =
        due.into_iter().map(
            |(order_id, event_id, recipient, subject, body, attempts)| Pending {
                order_id,
                event_id,
                recipient,
                subject,
                body,
                attempts,
            },
        );
    let mut sent = 0;
    for email in due {
        // Take the lease in one statement: of two senders, one gets it.
        let claimed = sqlx::query(
            "UPDATE sales_outbox SET not_before = $2 \
             WHERE order_id = $1 AND sent_at IS NULL AND not_before <= $3",
        )
        .bind(&email.order_id)
        .bind(epoch_millis(mailer.lease()))
        .bind(epoch_millis(Duration::ZERO))
        .execute(db.pool())
        .await?
        .rows_affected();
        if claimed != 1 {
            continue;
        }
        let message = compose(mailer, &email)?;
        let outcome = tokio::select! {
            () = shutdown.cancelled() => {
                release(db, &email.order_id).await?;
                return Ok(sent);
            }
            outcome = mailer.send(message) => outcome,
        };
        match outcome {
            Ok(()) => {
                confirm(db, log, &email).await?;
                sent += 1;
            }
            Err(e) => {
                let error = format!("{e:#}");
                let backoff = Duration::from_secs(1)
                    .saturating_mul(
                        2u32.saturating_pow(u32::try_from(email.attempts).unwrap_or(u32::MAX)),
                    )
                    .min(MAX_BACKOFF);
                tracing::warn!(order_id = %email.order_id, attempts = email.attempts + 1, ?backoff, %error, "confirmation email not sent; will retry");
                sqlx::query(
                    "UPDATE sales_outbox SET attempts = attempts + 1, last_error = $2, not_before = $3 \
                     WHERE order_id = $1",
                )
                .bind(&email.order_id)
                .bind(error)
                .bind(epoch_millis(backoff))
                .execute(db.pool())
                .await?;
            }
        }
    }
    Ok(sent)
}

/// Gives a lease back, so the email goes out as soon as a sender runs again.
async fn release(db: &Database, order_id: &str) -> anyhow::Result<()> {
    sqlx::query("UPDATE sales_outbox SET not_before = 0 WHERE order_id = $1 AND sent_at IS NULL")
        .bind(order_id)
        .execute(db.pool())
        .await?;
    Ok(())
}

fn compose(mailer: &Mailer, email: &Pending) -> anyhow::Result<Message> {
    let to: Mailbox = email
        .recipient
        .parse()
        .context("the outbox holds an invalid email address")?;
    Message::builder()
        .from(mailer.from.clone())
        .to(to)
        .subject(email.subject.clone())
        .message_id(Some(format!("<order-{}@retail.example>", email.order_id)))
        .singlepart(readable_body(email.body.clone()))
        .context("composing the confirmation email")
}

/// Step 3: the sent email becomes `OrderConfirmationSent`, once.
async fn confirm(db: &Database, log: &EventLog, email: &Pending) -> anyhow::Result<()> {
    let order_id = Uuid::parse_str(&email.order_id).context("sales_outbox.order_id")?;
    let cause = Uuid::parse_str(&email.event_id).context("sales_outbox.event_id")?;
    let now = now_micros().to_rfc3339();
    let sent = NewEvent::new(
        stream_of(order_id),
        EventType::parse("OrderConfirmationSent").expect("a valid event type"),
        serde_json::json!({ "order_id": order_id, "email": email.recipient }),
    )
    .with_id(Uuid::new_v5(&cause, b"OrderConfirmationSent"))
    .with_metadata(serde_json::json!({ "causation_id": cause }));
    let mut tx = db.begin().await?;
    log.append_unnumbered(&mut tx, Expected::Any, &[sent])
        .await?;
    sqlx::query(
        "UPDATE sales_orders SET confirmation_sent_at = $2 \
         WHERE order_id = $1 AND confirmation_sent_at IS NULL",
    )
    .bind(order_id.to_string())
    .bind(&now)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE sales_outbox SET sent_at = $2 WHERE order_id = $1")
        .bind(order_id.to_string())
        .bind(&now)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(%order_id, "order confirmation sent");
    Ok(())
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
