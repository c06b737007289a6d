//! Measurement helpers and table printing.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

/// Throughput and latency of one measured operation.
#[derive(Debug, Clone)]
pub struct Measurement {
    pub name: String,
    pub ops_per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// Operations completed.
    pub count: u64,
}

/// Runs `op` from `concurrency` tasks for `duration`, recording each call's latency.
pub async fn measure<F, Fut>(
    name: &str,
    concurrency: usize,
    duration: Duration,
    op: F,
) -> Measurement
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let deadline = started + duration;
    let tasks = (0..concurrency).map(|task| {
        let op = op.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(100_000);
            let mut i = task as u64 * 1_000_003;
            while Instant::now() < deadline {
                let t = Instant::now();
                op(i).await;
                latencies.push(t.elapsed());
                i += 1;
            }
            latencies
        })
    });
    let mut all = Vec::new();
    for task in futures_util::future::join_all(tasks).await {
        all.extend(task.unwrap_or_default());
    }
    let elapsed = started.elapsed();
    all.sort_unstable();
    let pick = |p: f64| {
        all.get(((all.len().max(1) - 1) as f64 * p) as usize)
            .copied()
            .unwrap_or_default()
    };
    Measurement {
        name: name.to_string(),
        ops_per_sec: all.len() as f64 / elapsed.as_secs_f64(),
        p50: pick(0.50),
        p99: pick(0.99),
        count: all.len() as u64,
    }
}

/// The measurement with the median throughput of several rounds (rounds of different operations
/// are interleaved by the caller, so background noise hits them alike).
pub fn median(mut rounds: Vec<Measurement>) -> Option<Measurement> {
    rounds.sort_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
    let middle = rounds.len() / 2;
    rounds.into_iter().nth(middle)
}

/// Prints measurements with their throughput ratio to the first row (the baseline).
pub fn print_table(title: &str, rows: &[Measurement]) {
    println!("\n## {title}\n");
    println!(
        "| {:<44} | {:>12} | {:>9} | {:>9} | {:>8} |",
        "operation", "ops/s", "p50", "p99", "vs first"
    );
    println!(
        "|{:-<46}|{:->14}|{:->11}|{:->11}|{:->10}|",
        "", "", "", "", ""
    );
    let base = rows.first().map_or(1.0, |r| r.ops_per_sec);
    for r in rows {
        println!(
            "| {:<44} | {:>12.0} | {:>9} | {:>9} | {:>7.2}x |",
            r.name,
            r.ops_per_sec,
            fmt_duration(r.p50),
            fmt_duration(r.p99),
            r.ops_per_sec / base
        );
    }
}

/// `1.2µs`, `35.0µs`, `4.1ms`, `2.0s`.
pub fn fmt_duration(d: Duration) -> String {
    let nanos = d.as_nanos() as f64;
    if nanos < 1_000.0 {
        format!("{nanos:.0}ns")
    } else if nanos < 1_000_000.0 {
        format!("{:.1}µs", nanos / 1e3)
    } else if nanos < 1e9 {
        format!("{:.1}ms", nanos / 1e6)
    } else {
        format!("{:.2}s", nanos / 1e9)
    }
}
