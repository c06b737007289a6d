//! Bytes per entry: what one cached value costs in Redis (`MEMORY USAGE` of the entry vs a raw
//! `SET` of the same rmp-serde bytes: the envelope's overhead) and in the L1 tier (resident
//! memory per entry vs a bare moka cache holding the same values).
//!
//! L1 bytes are measured in a child process of its own (this binary with `--probe-l1`): it fills
//! one tier of [`PROBE_ENTRIES`] values and reports how much its resident set grew, per entry, so
//! allocator overhead and moka's own bookkeeping count (and nothing freed by an earlier section
//! is reused).

use std::time::Duration;

use cache_layer::{Cache, Policy};

use super::{page, Page};
use crate::{redis_server::PrivateRedis, Settings};

/// Entries a probe fills.
pub const PROBE_ENTRIES: u64 = 20_000;
/// Keys whose Redis `MEMORY USAGE` is averaged.
const SAMPLED: u64 = 200;

pub async fn run(settings: &Settings, server: Option<&PrivateRedis>) -> Result<(), String> {
    let run_id = std::process::id();
    let cache = Cache::builder()
        .redis(settings.redis_url.as_str())
        .namespace(format!("bench-size-{run_id}"))
        .build()
        .map_err(|err| format!("cannot build the cache: {err}"))?;
    let mut raw = redis::Client::open(settings.redis_url.as_str())
        .map_err(|err| format!("bad redis url: {err}"))?
        .get_multiplexed_async_connection()
        .await
        .map_err(|err| format!("redis unreachable: {err}"))?;
    let plain = Policy::ttl(Duration::from_secs(3600));
    let tagged = plain.clone().tags(["product:1", "category:2"]);
    // (row, raw value bytes, Redis bytes) summed over the sampled keys.
    let mut rows: Vec<(&str, u64, u64)> = vec![
        ("raw SET of the rmp-serde bytes", 0, 0),
        ("cache-layer entry", 0, 0),
        ("cache-layer entry, 2 tags", 0, 0),
    ];
    for id in 0..SAMPLED {
        let value = page(id);
        let raw_key = format!("raw-size:{run_id}:{id}");
        let bytes = rmp_serde::to_vec_named(&value).map_err(|err| err.to_string())?;
        let () = redis::cmd("SET")
            .arg(&raw_key)
            .arg(bytes)
            .query_async(&mut raw)
            .await
            .map_err(|err| format!("SET: {err}"))?;
        let (ours, ours_tagged) = (format!("page:{id}"), format!("tagged:{id}"));
        cache
            .set(&ours, &value, &plain)
            .await
            .map_err(|err| format!("set: {err}"))?;
        cache
            .set(&ours_tagged, &value, &tagged)
            .await
            .map_err(|err| format!("set: {err}"))?;
        let keys = [
            raw_key,
            cache.redis_key(&ours),
            cache.redis_key(&ours_tagged),
        ];
        for (row, key) in rows.iter_mut().zip(&keys) {
            let len: u64 = redis::cmd("STRLEN")
                .arg(key)
                .query_async(&mut raw)
                .await
                .map_err(|err| format!("STRLEN {key}: {err}"))?;
            let usage: Option<u64> = redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(key)
                .arg("SAMPLES")
                .arg(0)
                .query_async(&mut raw)
                .await
                .map_err(|err| format!("MEMORY USAGE {key}: {err}"))?;
            let usage = usage.ok_or_else(|| format!("{key} is not in Redis"))?;
            if len == 0 {
                return Err(format!("{key} holds nothing"));
            }
            row.1 += len;
            row.2 += usage;
        }
    }
    println!("\n## Bytes per entry in Redis, ~0.9 KiB value (mean of {SAMPLED} keys)\n");
    println!(
        "| {:<40} | {:>11} | {:>13} | {:>13} |",
        "entry", "value bytes", "MEMORY USAGE", "vs raw"
    );
    println!("|{:-<42}|{:->12}:|{:->14}:|{:->14}:|", "", "", "", "");
    let (raw_len, raw_usage) = (rows[0].1 as f64, rows[0].2 as f64);
    for (name, len, usage) in &rows {
        let (len, usage) = (*len as f64 / SAMPLED as f64, *usage as f64 / SAMPLED as f64);
        println!(
            "| {name:<40} | {len:>11.0} | {usage:>13.0} | {:>+12.0}B |",
            usage - raw_usage / SAMPLED as f64
        );
    }
    println!(
        "\nenvelope overhead per entry: {:+.0} value bytes, {:+.0} Redis bytes",
        (rows[1].1 as f64 - raw_len) / SAMPLED as f64,
        (rows[1].2 as f64 - raw_usage) / SAMPLED as f64
    );
    if rows[1].1 <= rows[0].1 {
        return Err("an entry cannot be smaller than its value".into());
    }

    // L1: one child process per tier.
    let entries = match settings.mode {
        crate::Mode::Smoke => PROBE_ENTRIES / 10,
        _ => PROBE_ENTRIES,
    };
    let mut probes = Vec::new();
    for tier in ["moka", "l1"] {
        let exe = std::env::current_exe().map_err(|err| err.to_string())?;
        let output = std::process::Command::new(exe)
            .args(["--probe-l1", tier, &entries.to_string()])
            .env("REDIS_URL", &settings.redis_url)
            .output()
            .map_err(|err| format!("cannot run the L1 probe: {err}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let bytes: f64 = stdout
            .lines()
            .find_map(|line| line.strip_prefix("bytes per entry: "))
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| {
                format!(
                    "the {tier} probe failed: {stdout}{}",
                    String::from_utf8_lossy(&output.stderr)
                )
            })?;
        probes.push((tier, bytes));
    }
    println!("\n## Bytes per entry in L1, ~0.9 KiB value ({entries} entries, resident memory)\n");
    println!(
        "| {:<40} | {:>15} | {:>13} |",
        "tier", "bytes per entry", "vs moka"
    );
    println!("|{:-<42}|{:->16}:|{:->14}:|", "", "", "");
    let base = probes[0].1;
    for (tier, bytes) in &probes {
        let name = match *tier {
            "moka" => "moka::sync::Cache<String, Page>",
            _ => "cache-layer L1 (local tier)",
        };
        println!("| {name:<40} | {bytes:>15.0} | {:>+12.0}B |", bytes - base);
    }
    let _ = server;
    Ok(())
}

/// Resident set size of this process, bytes (Linux `/proc/self/statm`; 0 elsewhere).
fn resident_bytes() -> u64 {
    let pages: u64 = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// The child process of the L1 measurement: fills one tier with `entries` pages and prints the
/// growth of its resident set per entry.
pub fn probe(tier: &str, entries: u64) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| err.to_string())?;
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    runtime.block_on(async {
        let policy = Policy::ttl(Duration::from_secs(3600));
        match tier {
            "moka" => {
                let moka: moka::sync::Cache<String, Page> = moka::sync::Cache::new(entries + 1);
                moka.insert("warm-up".into(), page(0));
                moka.run_pending_tasks();
                let before = resident_bytes();
                for id in 0..entries {
                    moka.insert(format!("page:{id}"), page(id));
                }
                moka.run_pending_tasks();
                let grown = resident_bytes().saturating_sub(before);
                if moka.entry_count() != entries + 1 {
                    return Err(format!("moka holds {} entries", moka.entry_count()));
                }
                println!("bytes per entry: {}", grown as f64 / entries as f64);
            }
            _ => {
                // Redis as the store, so only the L1 tier holds values in this process.
                let cache = Cache::builder()
                    .redis(url.as_str())
                    .namespace(format!("bench-size-probe-{}", std::process::id()))
                    .local(entries + 1)
                    .build()
                    .map_err(|err| err.to_string())?;
                let _: Page = cache
                    .get_or_fetch("warm-up", &policy, || async { page(0) })
                    .await;
                let before = resident_bytes();
                for id in 0..entries {
                    let _: Page =
                        cache
                            .get_or_fetch(&format!("page:{id}"), &policy, move || async move {
                                page(id)
                            })
                            .await;
                }
                let grown = resident_bytes().saturating_sub(before);
                // Every entry must still answer from L1.
                let hits_before = cache.stats().local_hits;
                for id in 0..entries {
                    let _: Page = cache
                        .get_or_fetch(&format!("page:{id}"), &policy, || async { page(0) })
                        .await;
                }
                let l1_hits = cache.stats().local_hits - hits_before;
                if l1_hits != entries {
                    return Err(format!("{l1_hits} of {entries} re-reads were L1 hits"));
                }
                println!("bytes per entry: {}", grown as f64 / entries as f64);
            }
        }
        Ok(())
    })
}
