//! The data-access layer: the product page's queries, cached with `#[cached]`, and the write path,
//! which invalidates by tag.

use std::sync::Arc;

use cache_layer::{cached, invalidate, Cache};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::db::Db;

/// A product with its brand, category and reviews: the seed article's join and aggregates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductDetails {
    pub id: i64,
    pub sku: String,
    pub name: String,
    pub description: String,
    pub price_cents: i64,
    pub stock: i32,
    /// Bumped by every update: what the load run's correctness check compares.
    pub version: i64,
    pub updated_at_ms: i64,
    pub category: Category,
    pub brand: Brand,
    pub reviews: ReviewSummary,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Category {
    pub id: i32,
    pub name: String,
    pub department: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Brand {
    pub id: i32,
    pub name: String,
    pub country: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewSummary {
    pub count: i64,
    pub average_rating: Option<f64>,
    /// Reviews with 1, 2, 3, 4 and 5 stars.
    pub histogram: Vec<i64>,
    /// The five newest.
    pub latest: Vec<Review>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Review {
    pub author: String,
    pub rating: i16,
    pub title: String,
    pub body: String,
}

/// One of the best-rated products of a category (the page's "top in this category" box).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopProduct {
    pub id: i64,
    pub name: String,
    pub price_cents: i64,
    pub version: i64,
    pub review_count: i64,
    pub average_rating: f64,
}

/// The body of `PUT /products/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductUpdate {
    pub name: String,
    pub price_cents: i64,
    pub stock: i32,
}

/// What `PUT /products/{id}` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdatedProduct {
    pub id: i64,
    pub version: i64,
    pub name: String,
    pub price_cents: i64,
    pub stock: i32,
    pub category_id: i32,
}

/// The product, brand, category and review aggregates in one statement. Reviews are reached
/// through the `(product_id, created_at DESC)` index; the cost grows with a product's review count.
const PRODUCT_SQL: &str = "
SELECT p.id, p.sku, p.name, p.description, p.price_cents, p.stock, p.version,
       (extract(epoch FROM p.updated_at) * 1000)::int8 AS updated_at_ms,
       c.id AS category_id, c.name AS category_name, d.name AS department,
       b.id AS brand_id, b.name AS brand_name, b.country,
       s.review_count, s.average_rating, s.histogram,
       l.authors, l.ratings, l.titles, l.bodies
FROM products p
JOIN categories c ON c.id = p.category_id
LEFT JOIN categories d ON d.id = c.parent_id
JOIN brands b ON b.id = p.brand_id
CROSS JOIN LATERAL (
    SELECT count(*) AS review_count,
           avg(r.rating)::float8 AS average_rating,
           ARRAY[count(*) FILTER (WHERE r.rating = 1), count(*) FILTER (WHERE r.rating = 2),
                 count(*) FILTER (WHERE r.rating = 3), count(*) FILTER (WHERE r.rating = 4),
                 count(*) FILTER (WHERE r.rating = 5)] AS histogram
    FROM reviews r
    WHERE r.product_id = p.id
) s
CROSS JOIN LATERAL (
    SELECT coalesce(array_agg(x.author ORDER BY x.created_at DESC), '{}') AS authors,
           coalesce(array_agg(x.rating ORDER BY x.created_at DESC), '{}') AS ratings,
           coalesce(array_agg(x.title ORDER BY x.created_at DESC), '{}') AS titles,
           coalesce(array_agg(x.body ORDER BY x.created_at DESC), '{}') AS bodies
    FROM (SELECT r.author, r.rating, r.title, r.body, r.created_at
          FROM reviews r
          WHERE r.product_id = p.id
          ORDER BY r.created_at DESC
          LIMIT 5) x
) l
WHERE p.id = $1";

/// The five best-rated products of a category (Bayesian average: ten phantom 3.5-star reviews),
/// aggregated over every review of the category's ~100 products.
const CATEGORY_TOP_SQL: &str = "
SELECT p.id, p.name, p.price_cents, p.version,
       count(*) AS review_count, avg(r.rating)::float8 AS average_rating
FROM products p
JOIN reviews r ON r.product_id = p.id
WHERE p.category_id = $1
GROUP BY p.id
ORDER BY (sum(r.rating) + 35.0) / (count(*) + 10) DESC, p.id
LIMIT 5";

const UPDATE_SQL: &str = "
UPDATE products
SET name = $2, price_cents = $3, stock = $4, version = version + 1, updated_at = now()
WHERE id = $1
RETURNING id, version, name, price_cents, stock, category_id";

/// The product catalog. With `cached == false` every call goes to PostgreSQL (the `_uncached`
/// companions the macro generates), which is the "before" of the load run.
pub struct Catalog {
    db: Arc<Db>,
    cache: Cache,
    cached: bool,
}

impl Catalog {
    /// A catalog reading through `cache`.
    pub fn cached(db: Arc<Db>, cache: Cache) -> Catalog {
        Catalog {
            db,
            cache,
            cached: true,
        }
    }

    /// A catalog that always queries the database.
    pub fn uncached(db: Arc<Db>) -> Catalog {
        Catalog {
            db,
            cache: Cache::in_memory(),
            cached: false,
        }
    }

    /// The cache (also used by the HTTP layer).
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The product's details, `None` when there is no such product.
    pub async fn product(&self, id: i64) -> Result<Option<ProductDetails>, sqlx::Error> {
        if self.cached {
            self.product_details(id).await
        } else {
            self.product_details_uncached(id).await
        }
    }

    /// The best-rated products of a category.
    pub async fn top_in_category(&self, category_id: i32) -> Result<Vec<TopProduct>, sqlx::Error> {
        if self.cached {
            self.category_top(category_id).await
        } else {
            self.category_top_uncached(category_id).await
        }
    }

    /// Updates a product; `None` when there is no such product. Every cached value showing the
    /// product is gone for every reader once this returns: its details (tag `product:{id}`) and
    /// its category's top list, which lists other products' names and prices (tag
    /// `category:{category_id}`; HTTP responses carry both tags).
    pub async fn update(
        &self,
        id: i64,
        update: &ProductUpdate,
    ) -> Result<Option<UpdatedProduct>, sqlx::Error> {
        let updated = self.update_product(id, update).await?;
        if let Some(updated) = &updated {
            // The category is known only after the UPDATE (`RETURNING`), and `#[invalidate]`
            // tags are templates over the arguments, so this tag is dropped by hand.
            let tag = format!("category:{}", updated.category_id);
            if let Err(error) = self.cache.invalidate_tag(&tag).await {
                // Same policy as `#[invalidate]`: the write happened; log and carry on.
                eprintln!("product_api: could not invalidate {tag}: {error}");
            }
        }
        Ok(updated)
    }

    #[cached(cache = &self.cache, key = "product:{id}", tags = ["product:{id}"], ttl = "10m", jitter = 0.1)]
    async fn product_details(&self, id: i64) -> Result<Option<ProductDetails>, sqlx::Error> {
        self.db.count_query();
        let Some(row) = sqlx::query(PRODUCT_SQL)
            .bind(id)
            .fetch_optional(self.db.pool())
            .await?
        else {
            return Ok(None);
        };
        let authors: Vec<String> = row.try_get("authors")?;
        let ratings: Vec<i16> = row.try_get("ratings")?;
        let titles: Vec<String> = row.try_get("titles")?;
        let bodies: Vec<String> = row.try_get("bodies")?;
        let latest = authors
            .into_iter()
            .zip(ratings)
            .zip(titles.into_iter().zip(bodies))
            .map(|((author, rating), (title, body))| Review {
                author,
                rating,
                title,
                body,
            })
            .collect();
        Ok(Some(ProductDetails {
            id: row.try_get("id")?,
            sku: row.try_get("sku")?,
            name: row.try_get("name")?,
            description: row.try_get("description")?,
            price_cents: row.try_get("price_cents")?,
            stock: row.try_get("stock")?,
            version: row.try_get("version")?,
            updated_at_ms: row.try_get("updated_at_ms")?,
            category: Category {
                id: row.try_get("category_id")?,
                name: row.try_get("category_name")?,
                department: row.try_get("department")?,
            },
            brand: Brand {
                id: row.try_get("brand_id")?,
                name: row.try_get("brand_name")?,
                country: row.try_get("country")?,
            },
            reviews: ReviewSummary {
                count: row.try_get("review_count")?,
                average_rating: row.try_get("average_rating")?,
                histogram: row.try_get("histogram")?,
                latest,
            },
        }))
    }

    #[cached(cache = &self.cache, key = "category-top:{category_id}", tags = ["category:{category_id}"], ttl = "10m", jitter = 0.1)]
    async fn category_top(&self, category_id: i32) -> Result<Vec<TopProduct>, sqlx::Error> {
        self.db.count_query();
        let rows = sqlx::query(CATEGORY_TOP_SQL)
            .bind(category_id)
            .fetch_all(self.db.pool())
            .await?;
        rows.iter()
            .map(|row| {
                Ok(TopProduct {
                    id: row.try_get("id")?,
                    name: row.try_get("name")?,
                    price_cents: row.try_get("price_cents")?,
                    version: row.try_get("version")?,
                    review_count: row.try_get("review_count")?,
                    average_rating: row.try_get("average_rating")?,
                })
            })
            .collect()
    }

    #[invalidate(cache = &self.cache, tags = ["product:{id}"])]
    async fn update_product(
        &self,
        id: i64,
        update: &ProductUpdate,
    ) -> Result<Option<UpdatedProduct>, sqlx::Error> {
        self.db.count_query();
        let row = sqlx::query(UPDATE_SQL)
            .bind(id)
            .bind(&update.name)
            .bind(update.price_cents)
            .bind(update.stock)
            .fetch_optional(self.db.pool())
            .await?;
        row.map(|row| {
            Ok(UpdatedProduct {
                id: row.try_get("id")?,
                version: row.try_get("version")?,
                name: row.try_get("name")?,
                price_cents: row.try_get("price_cents")?,
                stock: row.try_get("stock")?,
                category_id: row.try_get("category_id")?,
            })
        })
        .transpose()
    }
}
