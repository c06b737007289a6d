//! Benchmark scenarios, one module per BENCHMARKS.md section.

pub mod cluster;
pub mod hit;
pub mod http;
pub mod local;
pub mod macros;
pub mod miss;
pub mod profile;
pub mod size;
pub mod stampede;
pub mod write_behind;

use serde::{Deserialize, Serialize};

/// The cached value: a product page of about 900 bytes of MessagePack (under the 1 KiB
/// compression threshold, like a typical small cached object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page {
    pub id: u64,
    pub name: String,
    pub brand: String,
    pub category: String,
    pub price_cents: u64,
    pub rating: f32,
    pub description: String,
    pub tags: Vec<String>,
}

/// Page `id`.
pub fn page(id: u64) -> Page {
    Page {
        id,
        name: format!("Product {id}"),
        brand: format!("Brand {}", id % 40),
        category: format!("Category {}", id % 12),
        price_cents: 999 + id % 50_000,
        rating: 4.5,
        description: "A sturdy, well-reviewed product. ".repeat(20),
        tags: (0..12).map(|t| format!("tag-{t}-{}", id % 7)).collect(),
    }
}

/// Number of distinct keys the hit benchmarks spread over.
pub const KEYS: u64 = 1_000;
