//! `mock-platform`: every platform Herald speaks to, on loopback, for load tests and manual
//! runs. Prints its base URLs, serves until SIGINT / SIGTERM.

use std::path::PathBuf;

use clap::Parser;
use herald_mock::{MockConfig, MockPlatform};

#[derive(Parser, Debug)]
#[command(
    name = "mock-platform",
    version,
    about = "Mock notification platforms on loopback"
)]
struct Args {
    /// HTTP listener for every HTTP platform and the /_mock control API.
    #[arg(long, default_value = "127.0.0.1:9090")]
    listen: String,
    /// SMTP sink listener.
    #[arg(long, default_value = "127.0.0.1:2525")]
    smtp_listen: String,
    /// Herald's HTTP base for callbacks (receipts, inbound messages).
    #[arg(long)]
    herald_url: Option<String>,
    /// TOML file with a MockConfig (secrets, knobs per platform, receipt delays).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut cfg: MockConfig = match &args.config {
        Some(p) => toml::from_str(&std::fs::read_to_string(p)?)?,
        None => MockConfig::default(),
    };
    if args.herald_url.is_some() {
        cfg.herald_url = args.herald_url.clone();
    }
    let m = MockPlatform::start_on(&args.listen, &args.smtp_listen, cfg).await?;
    println!("mock-platform http {} smtp {}", m.base_url(), m.smtp_url());
    println!(
        "sendgrid event webhook public key (channels.email.sendgrid_webhook_public_key): {}",
        herald_mock::sendgrid::webhook_public_key()
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
