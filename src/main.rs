//! `cargo run --release`: the whole retail system on one machine.

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kit::init_tracing();
    let config = retail::Config::parse();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let gw = format!("http://{}", listener.local_addr()?);
    let auth = if config.api_token.is_some() {
        " -H \"Authorization: Bearer $RETAIL_API_TOKEN\""
    } else {
        ""
    };
    println!(
        r#"retail system up at {gw}/  (data in {data})

services: {services}
feeds:    {gw}/<service>/feed   (open them in a browser, or: cargo run -p feed --bin feedctl -- tail --follow {gw}/sales/feed)

try it:
  curl -si{auth} -H 'content-type: application/json' {gw}/catalog/products \
       -d '{{"name":"Teapot","description":"Cast iron, 1 l","pictures":[],"weight_grams":1200,"size_mm":{{"l":200,"w":150,"h":120}}}}'
  curl -si{auth} -X PUT -H 'content-type: application/json' {gw}/sales/prices/<product_id> -d '{{"unit_price_cents":2500,"currency":"EUR"}}'
  curl -si{auth} -H 'content-type: application/json' {gw}/sales/orders \
       -d '{{"customer_id":"c-1","email":"ann@example.com","lines":[{{"product_id":"<product_id>","quantity":2}}]}}'

then watch the order flow: {gw}/sales/feed -> {gw}/billing/feed -> {gw}/fulfilment/feed -> {gw}/shipping/feed -> {gw}/loyalty/customers/c-1
Ctrl-C stops everything; a restart continues from the checkpoints."#,
        data = config.data_dir.display(),
        services = retail::SERVICES.map(|s| format!("{gw}/{s}/")).join(" "),
    );
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        kit::shutdown_signal().await;
        on_signal.cancel();
    });
    retail::run(config, listener, shutdown).await
}
