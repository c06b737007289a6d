//! cache-layer benchmarks: overhead against raw redis-rs, moka and the `cached` crate, and
//! stampede behaviour, measured side by side in one run. Results go to BENCHMARKS.md.
//!
//! ```text
//! cargo run --release -p bench                 # full run (~1 min)
//! cargo run --release -p bench -- --quick      # short run (~15 s)
//! cargo run --release -p bench -- --only hit   # one section: hit | miss | l1 | macro | stampede
//! ```
//!
//! Redis: a private `redis-server` on a free port when it is on PATH (so nothing else perturbs the
//! numbers or the command counts), else `REDIS_URL` / 127.0.0.1:6379.

mod redis_server;
mod report;
mod scenarios;

use std::time::Duration;

/// Run-wide settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long each throughput measurement runs.
    pub duration: Duration,
    /// Redis URL under test.
    pub redis_url: String,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only = args
        .windows(2)
        .find(|w| w[0] == "--only")
        .map(|w| w[1].clone());
    let private = redis_server::PrivateRedis::start();
    let redis_url = match &private {
        Some(server) => server.url(),
        None => std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
    };
    let settings = Settings {
        duration: if quick {
            Duration::from_millis(700)
        } else {
            Duration::from_secs(3)
        },
        redis_url,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start the runtime: {err}");
            std::process::exit(1);
        }
    };
    println!("# cache-layer benchmarks");
    println!(
        "redis: {} ({}), {} per measurement, {} CPUs",
        settings.redis_url,
        if private.is_some() {
            "private server"
        } else {
            "shared server"
        },
        report::fmt_duration(settings.duration),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let wanted = |section: &str| only.as_deref().is_none_or(|o| o == section);
    runtime.block_on(async {
        if wanted("hit") {
            scenarios::hit::run(&settings, private.as_ref()).await;
        }
        if wanted("miss") {
            scenarios::miss::run(&settings, private.as_ref()).await;
        }
        if wanted("l1") {
            scenarios::local::run(&settings).await;
        }
        if wanted("macro") {
            scenarios::macros::run(&settings).await;
        }
        if wanted("stampede") {
            scenarios::stampede::run(&settings).await;
        }
    });
}
