//! `herald-load`: Herald's load generator. Every scenario starts its own `redis-server` and
//! `herald` (release builds) on free loopback ports, runs bounded in time and count, stops
//! by itself, measures its baseline in the same run, and writes
//! `load-tests/results/<scenario>.{json,svg}` and `load-tests/results/summary.md`.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! target/release/herald-load smoke                  # every scenario, small counts, < 2 min
//! target/release/herald-load run e2e --duration 60  # one scenario, the issue's counts unless given
//! target/release/herald-load full                   # every scenario at the issue's counts
//! ```
#![forbid(unsafe_code)]

mod baseline;
mod env;
mod report;
mod scenarios;
mod sink;
mod stats;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

use crate::scenarios::{Ctx, Params, SCENARIOS};

#[derive(Parser, Debug)]
#[command(name = "herald-load", version, about = "Herald's load generator")]
struct Args {
    /// The herald binary (default: next to this executable, i.e. target/release/herald).
    #[arg(long, global = true)]
    herald_bin: Option<PathBuf>,
    /// The redis-server binary (default: redis-server on PATH).
    #[arg(long, global = true)]
    redis_server: Option<PathBuf>,
    /// Where results go.
    #[arg(long, global = true, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results"))]
    results: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Every scenario with its baselines at small counts (the whole thing < 2 min once built).
    Smoke,
    /// Every scenario at the issue's counts (1M campaign, 60 s runs, …): about 30 minutes.
    Full,
    /// One scenario: unary, batch, stream, e2e, priority or scheduled. The issue's counts
    /// unless --quick or overridden.
    Run {
        scenario: String,
        /// Seconds the scenario may run (its loops stop at this or --count).
        #[arg(long)]
        duration: Option<f64>,
        /// Notifications (or requests) at most.
        #[arg(long)]
        count: Option<u64>,
        /// Requests, batches or streams in flight.
        #[arg(long)]
        concurrency: Option<usize>,
        /// Bytes of content.body.
        #[arg(long)]
        body_len: Option<usize>,
        /// scheduled: seconds send_at is spread over; priority: HIGH sends per second.
        #[arg(long)]
        window: Option<f64>,
        /// The smoke's counts instead of the issue's.
        #[arg(long)]
        quick: bool,
    },
    /// The bare tonic server of the unary baseline (started as a child process by `run`).
    #[command(hide = true)]
    BaselineGrpc {
        #[arg(long)]
        listen: String,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if let Cmd::BaselineGrpc { listen } = &args.cmd {
        return baseline::serve_bare(listen).await;
    }
    // Ctrl-C drops the running scenario, and with it (kill_on_drop) every child process.
    tokio::select! {
        r = go(args) => r,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    }
}

async fn go(args: Args) -> Result<()> {
    let bins = env::Bins::resolve(args.herald_bin.clone(), args.redis_server.clone())?;
    let (mode, plan): (&str, Vec<(String, Params)>) = match &args.cmd {
        Cmd::Smoke => (
            "smoke",
            SCENARIOS
                .iter()
                .map(|s| (s.to_string(), Params::defaults(s, false)))
                .collect(),
        ),
        Cmd::Full => (
            "full",
            SCENARIOS
                .iter()
                .map(|s| (s.to_string(), Params::defaults(s, true)))
                .collect(),
        ),
        Cmd::Run {
            scenario,
            duration,
            count,
            concurrency,
            body_len,
            window,
            quick,
        } => {
            if !SCENARIOS.contains(&scenario.as_str()) {
                bail!(
                    "unknown scenario {scenario:?} (one of {})",
                    SCENARIOS.join(", ")
                );
            }
            let mut p = Params::defaults(scenario, !quick);
            if let Some(d) = duration {
                p.duration_s = *d;
            }
            if let Some(c) = count {
                p.count = *c;
            }
            if let Some(c) = concurrency {
                p.concurrency = *c;
            }
            if let Some(b) = body_len {
                p.body_len = *b;
            }
            if let Some(w) = window {
                p.window_s = *w;
            }
            ("run", vec![(scenario.clone(), p)])
        }
        Cmd::BaselineGrpc { .. } => unreachable!("handled in main"),
    };
    let ctx = Ctx {
        bins,
        mode: mode.to_string(),
    };
    let t0 = Instant::now();
    let mut failed = Vec::new();
    for (name, p) in plan {
        eprintln!("== {name} ({mode}) {p:?}");
        let t = Instant::now();
        match scenarios::run(&ctx, &name, p).await {
            Ok(r) => {
                report::write(&args.results, &r)?;
                eprintln!(
                    "   {:.1} s: {} {}/s, p99 {} ms, errors {}{}",
                    t.elapsed().as_secs_f64(),
                    stats::fmt_num(r.throughput),
                    r.unit,
                    r.latency
                        .map(|l| stats::fmt_num(l.p99_ms))
                        .unwrap_or_else(|| "-".into()),
                    r.errors,
                    r.ratio
                        .map(|x| format!(", {x:.2}x baseline"))
                        .unwrap_or_default(),
                );
                for tgt in r.targets.iter().filter(|t| !t.pass) {
                    eprintln!(
                        "   target missed: {} wanted {}, measured {}",
                        tgt.name, tgt.target, tgt.measured
                    );
                }
            }
            Err(e) => {
                eprintln!("   FAILED: {e:#}");
                failed.push(name);
            }
        }
    }
    eprintln!(
        "done in {:.1} s; results in {}",
        t0.elapsed().as_secs_f64(),
        args.results.display()
    );
    if let Ok(s) = std::fs::read_to_string(args.results.join("summary.md")) {
        println!("{s}");
    }
    if !failed.is_empty() {
        bail!("scenarios failed: {}", failed.join(", "));
    }
    Ok(())
}
