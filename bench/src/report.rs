//! Measurement helpers and table printing.
//!
//! Rows of one table are measured in interleaved rounds (a, b, c, a, b, c, ...) so background
//! noise on the machine hits every row alike. Each row reports its median round; the ratio column
//! is the median, over rounds, of the row's throughput divided by the first row's throughput *in
//! the same round* (adjacent in time), which is far steadier than a ratio of two medians.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::redis_server::PrivateRedis;

/// Throughput and latency of one measured operation.
#[derive(Debug, Clone)]
pub struct Measurement {
    pub ops_per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// Operations completed.
    pub count: u64,
}

impl Measurement {
    /// Summarises `latencies` (one per operation) of a run that took `elapsed`.
    pub fn from_latencies(mut latencies: Vec<Duration>, elapsed: Duration) -> Self {
        latencies.sort_unstable();
        let pick = |p: f64| {
            latencies
                .get(((latencies.len().max(1) - 1) as f64 * p) as usize)
                .copied()
                .unwrap_or_default()
        };
        Measurement {
            ops_per_sec: latencies.len() as f64 / elapsed.as_secs_f64(),
            p50: pick(0.50),
            p99: pick(0.99),
            count: latencies.len() as u64,
        }
    }
}

/// Runs `op` from `concurrency` tasks for `duration`, recording each call's latency.
pub async fn measure<F, Fut>(concurrency: usize, duration: Duration, op: F) -> Measurement
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
            let mut latencies = Vec::with_capacity(1 << 16);
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
        match task {
            Ok(latencies) => all.extend(latencies),
            // A failed assertion inside an operation: the benchmark is wrong, say so loudly.
            Err(err) => panic!("a benchmark task failed: {err}"),
        }
    }
    Measurement::from_latencies(all, started.elapsed())
}

/// One table: rows measured in interleaved rounds.
pub struct Comparison {
    title: String,
    /// Column header of the ratio column (`vs <first row>`).
    baseline: String,
    rows: Vec<(String, Vec<Measurement>)>,
}

impl Comparison {
    pub fn new(title: impl Into<String>, baseline: impl Into<String>) -> Self {
        Comparison {
            title: title.into(),
            baseline: baseline.into(),
            rows: Vec::new(),
        }
    }

    /// Records one round of the row `name` (rows keep the order they were first recorded in; the
    /// first is the baseline).
    pub fn record(&mut self, name: &str, measurement: Measurement) {
        match self.rows.iter_mut().find(|(row, _)| row == name) {
            Some((_, rounds)) => rounds.push(measurement),
            None => self.rows.push((name.to_string(), vec![measurement])),
        }
    }

    /// The median round of row `index` (by throughput).
    fn median_round(&self, index: usize) -> Option<&Measurement> {
        let rounds = &self.rows.get(index)?.1;
        let mut sorted: Vec<&Measurement> = rounds.iter().collect();
        sorted.sort_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
        sorted.get(sorted.len() / 2).copied()
    }

    /// Median over rounds of row `index`'s throughput relative to the first row's, same round.
    pub fn ratio(&self, index: usize) -> f64 {
        let (Some((_, base)), Some((_, rounds))) = (self.rows.first(), self.rows.get(index)) else {
            return f64::NAN;
        };
        let mut ratios: Vec<f64> = base
            .iter()
            .zip(rounds)
            .map(|(b, r)| r.ops_per_sec / b.ops_per_sec.max(f64::MIN_POSITIVE))
            .collect();
        ratios.sort_by(f64::total_cmp);
        ratios.get(ratios.len() / 2).copied().unwrap_or(f64::NAN)
    }

    /// Prints the table (Markdown).
    pub fn print(&self) {
        let rounds = self.rows.first().map_or(0, |(_, r)| r.len());
        println!("\n## {} ({rounds} interleaved rounds)\n", self.title);
        let vs = format!("vs {}", self.baseline);
        println!(
            "| {:<46} | {:>11} | {:>9} | {:>9} | {:>8} |",
            "operation", "ops/s", "p50", "p99", vs
        );
        println!(
            "|{:-<48}|{:->12}:|{:->10}:|{:->10}:|{:->9}:|",
            "", "", "", "", ""
        );
        for (index, (name, _)) in self.rows.iter().enumerate() {
            let Some(m) = self.median_round(index) else {
                continue;
            };
            println!(
                "| {:<46} | {:>11.0} | {:>9} | {:>9} | {:>7.2}x |",
                name,
                m.ops_per_sec,
                fmt_duration(m.p50),
                fmt_duration(m.p99),
                self.ratio(index)
            );
        }
    }
}

/// Prints Redis commands per operation since the last [`PrivateRedis::reset_stats`].
pub fn print_commands_per_op(what: &str, server: Option<&PrivateRedis>, ops: u64) {
    let Some(server) = server else {
        return println!("\n{what}: (commands not counted on a shared server)");
    };
    print_calls_per_op(what, &server.command_calls(), ops);
}

/// Prints `calls` (per command, as counted by `INFO commandstats`) per operation.
pub fn print_calls_per_op(what: &str, calls: &[(String, u64)], ops: u64) {
    let per_op: Vec<String> = calls
        .iter()
        .map(|(cmd, n)| {
            format!(
                "{} {:.3}",
                cmd.to_uppercase(),
                *n as f64 / ops.max(1) as f64
            )
        })
        .collect();
    println!("\nRedis commands per {what}: {}", per_op.join(", "));
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
