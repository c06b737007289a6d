//! cache-layer benchmarks: overhead against raw redis-rs, moka and the `cached` crate, HTTP
//! requests/s through `CacheLayer`, stampede behaviour and write-behind counters, measured side by
//! side in one run. Results go to BENCHMARKS.md.
//!
//! ```text
//! cargo run --release -p bench                 # full run (~3 min)
//! cargo run --release -p bench -- --quick      # short run (~35 s)
//! cargo run --release -p bench -- --only hit   # one section (see SECTIONS)
//! cargo run --release -p bench -- --quick --only http,l1 --rounds 5   # sections, rounds
//! cargo run --release -p bench -- --aof --only write-behind   # Redis fsyncs every write
//! ```
//!
//! `--smoke` runs every section for a few hundred milliseconds: the benchmark's own test
//! (`bench/tests/smoke.rs`) uses it to check that every scenario still works and counts right.
//!
//! Redis: a private `redis-server` on a free port when it is on PATH (so nothing else perturbs the
//! numbers or the command counts), else `REDIS_URL` / 127.0.0.1:6379.

mod redis_server;
mod report;
mod scenarios;

use std::time::Duration;

/// The sections, in the order they run.
const SECTIONS: [&str; 9] = [
    "hit",
    "cluster",
    "miss",
    "l1",
    "macro",
    "size",
    "http",
    "stampede",
    "write-behind",
];

/// How long a run takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Full,
    Quick,
    Smoke,
}

/// Run-wide settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: Mode,
    /// How long each row runs per round.
    pub duration: Duration,
    /// Interleaved rounds per table.
    pub rounds: usize,
    /// Redis URL under test.
    pub redis_url: String,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, operation, n] = args.as_slice() {
        if flag == "--ops" {
            // One operation n times, for instruction counts (see scenarios/profile.rs).
            let n = n.parse().unwrap_or(1);
            if let Err(err) = scenarios::profile::run(operation, n) {
                eprintln!("--ops failed: {err}");
                std::process::exit(1);
            }
            return;
        }
    }
    if let [flag, tier, entries] = args.as_slice() {
        if flag == "--probe-l1" {
            // The child process of the `size` section's L1 measurement.
            let entries = entries.parse().unwrap_or(scenarios::size::PROBE_ENTRIES);
            if let Err(err) = scenarios::size::probe(tier, entries) {
                eprintln!("probe failed: {err}");
                std::process::exit(1);
            }
            return;
        }
    }
    let mode = if args.iter().any(|a| a == "--smoke") {
        Mode::Smoke
    } else if args.iter().any(|a| a == "--quick") {
        Mode::Quick
    } else {
        Mode::Full
    };
    let only: Option<Vec<String>> = args
        .windows(2)
        .find(|w| w[0] == "--only")
        .map(|w| w[1].split(',').map(str::to_owned).collect());
    for section in only.iter().flatten() {
        if !SECTIONS.contains(&section.as_str()) {
            eprintln!(
                "unknown section {section:?}; one of: {}",
                SECTIONS.join(", ")
            );
            std::process::exit(2);
        }
    }
    let rounds_override: Option<usize> = args
        .windows(2)
        .find(|w| w[0] == "--rounds")
        .and_then(|w| w[1].parse().ok());
    let aof = args.iter().any(|a| a == "--aof");
    let private = redis_server::PrivateRedis::start(aof);
    let redis_url = match &private {
        Some(server) => server.url(),
        None => std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
    };
    let (duration, rounds) = match mode {
        Mode::Full => (Duration::from_secs(1), 7),
        Mode::Quick => (Duration::from_millis(300), 3),
        Mode::Smoke => (Duration::from_millis(100), 1),
    };
    let settings = Settings {
        mode,
        duration,
        rounds: rounds_override.unwrap_or(rounds).max(1),
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
        "redis: {} ({}{}), {mode:?} mode: {} rounds x {} per row, {} CPUs",
        settings.redis_url,
        if private.is_some() {
            "private server"
        } else {
            "shared server"
        },
        if aof { ", appendfsync always" } else { "" },
        settings.rounds,
        report::fmt_duration(settings.duration),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let wanted = |section: &str| {
        only.as_ref()
            .is_none_or(|only| only.iter().any(|o| o == section))
    };
    let server = private.as_ref();
    let failures = runtime.block_on(async {
        let mut failures = Vec::new();
        for section in SECTIONS.into_iter().filter(|s| wanted(s)) {
            let result = match section {
                "hit" => scenarios::hit::run(&settings, server).await,
                "cluster" => scenarios::cluster::run(&settings).await,
                "miss" => scenarios::miss::run(&settings, server).await,
                "l1" => scenarios::local::run(&settings).await,
                "macro" => scenarios::macros::run(&settings).await,
                "size" => scenarios::size::run(&settings, server).await,
                "http" => scenarios::http::run(&settings, server).await,
                "stampede" => scenarios::stampede::run(&settings).await,
                _ => scenarios::write_behind::run(&settings, server).await,
            };
            if let Err(err) = result {
                eprintln!("\nsection {section} FAILED: {err}");
                failures.push(section);
            }
        }
        failures
    });
    if !failures.is_empty() {
        eprintln!("failed sections: {}", failures.join(", "));
        // `exit` runs no destructors: stop the private server first.
        drop(runtime);
        drop(private);
        std::process::exit(1);
    }
}
