//! Page-view counters written behind to a "database".
//!
//! ```text
//! cargo run --example write_behind                       # Redis at 127.0.0.1:6379
//! REDIS_URL=redis://10.0.0.5:6379 cargo run --example write_behind
//! REDIS_URL=memory cargo run --example write_behind       # no Redis: in-process counters
//! ```
//!
//! 50 simulated request handlers count page views for two seconds; a flusher writes the
//! accumulated counts to the database every 500 ms, in one transaction per batch that also records
//! the batch id (so a batch redelivered after a crash is not counted twice). On shutdown the
//! flusher pushes and flushes what is pending, and the database totals equal the views counted.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use cache_layer::{Batch, Cache};

/// A stand-in for a SQL database: `UPDATE products SET views = views + $delta` per entry, and
/// `INSERT INTO applied_batches (id)` in the same transaction.
#[derive(Default)]
struct Database {
    views: HashMap<String, i64>,
    applied_batches: HashSet<String>,
}

impl Database {
    fn apply(&mut self, batch: &Batch) -> Result<(), String> {
        if !self.applied_batches.insert(batch.id().to_owned()) {
            println!("  batch {} already applied: skipped", batch.id());
            return Ok(());
        }
        for (product, delta) in batch.iter() {
            *self.views.entry(product.clone()).or_default() += delta;
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let namespace = format!("example-wb-{}", std::process::id());
    let cache = if url == "memory" {
        Cache::builder().namespace(namespace).build()?
    } else {
        Cache::builder().redis(&url).namespace(namespace).build()?
    };
    let views = cache.counters("views");
    println!("counting into {} ({url})", views.redis_key());

    let db = Arc::new(Mutex::new(Database::default()));
    let sink_db = db.clone();
    let flusher = views.flush_every_with_id(Duration::from_millis(500), move |batch: Batch| {
        let db = sink_db.clone();
        async move {
            println!("  flushing batch {} ({} products)", batch.id(), batch.len());
            db.lock()
                .map_err(|_| "database poisoned".to_string())?
                .apply(&batch)
        }
    });

    let started = Instant::now();
    let handlers: Vec<_> = (0..50u64)
        .map(|handler| {
            let views = views.clone();
            tokio::spawn(async move {
                let mut counted = 0i64;
                let mut request = handler;
                while started.elapsed() < Duration::from_secs(2) {
                    request = request.wrapping_mul(6364136223846793005).wrapping_add(1);
                    let product = format!("product:{}", request % 20);
                    views.incr(&product, 1).await?;
                    counted += 1;
                    if counted % 64 == 0 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                Ok::<i64, cache_layer::Error>(counted)
            })
        })
        .collect();
    let mut counted = 0;
    for handler in handlers {
        counted += handler.await??;
    }

    let report = flusher.shutdown().await?;
    let db = db.lock().map_err(|_| "database poisoned")?;
    let stored: i64 = db.views.values().sum();
    println!(
        "counted {counted} views; the database holds {stored} in {} products \
         ({} batches, {} pushes to Redis)",
        db.views.len(),
        report.batches,
        views.stats().pushes,
    );
    assert_eq!(
        stored, counted,
        "every view reached the database exactly once"
    );
    Ok(())
}
