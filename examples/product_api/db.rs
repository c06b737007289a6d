//! PostgreSQL: connection pool, schema, seed data and the counted queries.
//!
//! Everything lives in one schema (default `cache_layer_demo`); connections set `search_path` to
//! it, so the SQL below is unqualified and every string is `'static`.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions},
    AssertSqlSafe, PgPool, Row,
};

/// The default `DATABASE_URL`.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1/test";

/// The default schema of the example (tests use their own).
pub const DEFAULT_SCHEMA: &str = "cache_layer_demo";

/// How much data to generate. Categories, brands and reviews scale with the products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scale {
    /// Products (the seed article: 100k).
    pub products: i64,
    /// Reviews (the seed article: 500k), skewed: popular products have hundreds.
    pub reviews: i64,
}

impl Scale {
    /// The seed article's catalog: 100k products, 500k reviews.
    pub const SEED_ARTICLE: Scale = Scale {
        products: 100_000,
        reviews: 500_000,
    };

    /// A small catalog for tests.
    pub fn small(products: i64) -> Scale {
        Scale {
            products,
            reviews: products * 5,
        }
    }

    /// Leaf categories: about 100 products each (20 departments above them).
    pub fn categories(&self) -> i64 {
        (self.products / 100).max(4)
    }

    /// Brands: about 250 products each.
    pub fn brands(&self) -> i64 {
        (self.products / 250).max(4)
    }
}

/// The department rows (top-level categories); leaf categories start after them.
const DEPARTMENTS: i64 = 20;

/// The pool plus a counter of the SQL statements sent, which the load run reports as queries/s.
pub struct Db {
    pool: PgPool,
    schema: String,
    queries: AtomicU64,
}

/// `true` for names that are safe to splice into DDL unquoted (`[a-z_][a-z0-9_]*`, ≤ 63 bytes).
pub fn valid_schema_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && name.len() <= 63
}

impl Db {
    /// Connects (a pool of `max_connections`) with `search_path` set to `schema`, creating the
    /// schema when it is missing. Fails fast (5 s) when PostgreSQL is not reachable.
    pub async fn connect(url: &str, schema: &str, max_connections: u32) -> Result<Db, sqlx::Error> {
        if !valid_schema_name(schema) {
            return Err(sqlx::Error::Configuration(
                format!("schema name {schema:?} must match [a-z_][a-z0-9_]*").into(),
            ));
        }
        let options: PgConnectOptions = url.parse()?;
        let options = options
            .application_name("cache-layer product_api")
            .options([("search_path", schema)]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}"
        )))
        .execute(&pool)
        .await?;
        Ok(Db {
            pool,
            schema: schema.to_string(),
            queries: AtomicU64::new(0),
        })
    }

    /// The pool, for queries that are counted by the caller.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The schema name.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Counts one SQL statement (call it next to every query the service sends).
    pub fn count_query(&self) {
        self.queries.fetch_add(1, Ordering::Relaxed);
    }

    /// SQL statements sent by the service so far.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// Drops the schema and everything in it (tests clean up with this).
    pub async fn drop_schema(&self) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            self.schema
        )))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Creates the tables and the seed data unless a previous run did (same scale). Runs in one
    /// transaction under an advisory lock, so concurrent starts seed once and a crash leaves
    /// nothing half-built. Returns how long seeding took, or `None` when the data was there.
    pub async fn ensure_seeded(&self, scale: Scale) -> Result<Option<Duration>, sqlx::Error> {
        let started = Instant::now();
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext(current_schema()))")
            .execute(&mut *tx)
            .await?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS seed_info (
                 products bigint NOT NULL,
                 reviews bigint NOT NULL,
                 seeded_at timestamptz NOT NULL DEFAULT now())",
        )
        .execute(&mut *tx)
        .await?;
        let existing = sqlx::query("SELECT products, reviews FROM seed_info")
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(row) = existing {
            let seeded = Scale {
                products: row.try_get("products")?,
                reviews: row.try_get("reviews")?,
            };
            if seeded == scale {
                tx.commit().await?;
                return Ok(None);
            }
            // Another scale: rebuild.
            sqlx::raw_sql(
                "DROP TABLE IF EXISTS reviews, products, brands, categories; TRUNCATE seed_info",
            )
            .execute(&mut *tx)
            .await?;
        }

        sqlx::raw_sql(SCHEMA_SQL).execute(&mut *tx).await?;
        // Fixed seed: the same catalog on every machine.
        sqlx::query("SELECT setseed(0.42)")
            .execute(&mut *tx)
            .await?;
        sqlx::query(SEED_CATEGORIES_SQL)
            .bind(DEPARTMENTS)
            .bind(scale.categories())
            .execute(&mut *tx)
            .await?;
        sqlx::query(SEED_BRANDS_SQL)
            .bind(scale.brands())
            .execute(&mut *tx)
            .await?;
        sqlx::query(SEED_PRODUCTS_SQL)
            .bind(scale.products)
            .bind(DEPARTMENTS)
            .bind(scale.categories())
            .bind(scale.brands())
            .execute(&mut *tx)
            .await?;
        sqlx::query(SEED_REVIEWS_SQL)
            .bind(scale.reviews)
            .bind(scale.products)
            .execute(&mut *tx)
            .await?;
        // Indexes and foreign keys after the bulk load: one pass each instead of per row.
        sqlx::raw_sql(INDEX_SQL).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO seed_info (products, reviews) VALUES ($1, $2)")
            .bind(scale.products)
            .bind(scale.reviews)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        sqlx::raw_sql("ANALYZE categories, brands, products, reviews")
            .execute(&self.pool)
            .await?;
        Ok(Some(started.elapsed()))
    }
}

const SCHEMA_SQL: &str = "
CREATE TABLE categories (
    id        integer PRIMARY KEY,
    parent_id integer,
    name      text NOT NULL,
    slug      text NOT NULL
);
CREATE TABLE brands (
    id      integer PRIMARY KEY,
    name    text NOT NULL,
    country text NOT NULL
);
CREATE TABLE products (
    id          bigint PRIMARY KEY,
    sku         text NOT NULL,
    name        text NOT NULL,
    description text NOT NULL,
    price_cents bigint NOT NULL,
    stock       integer NOT NULL,
    category_id integer NOT NULL,
    brand_id    integer NOT NULL,
    version     bigint NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);
CREATE TABLE reviews (
    id         bigint PRIMARY KEY,
    product_id bigint NOT NULL,
    author     text NOT NULL,
    rating     smallint NOT NULL CHECK (rating BETWEEN 1 AND 5),
    title      text NOT NULL,
    body       text NOT NULL,
    created_at timestamptz NOT NULL
);
";

/// $1 departments, $2 leaf categories (ids after the departments).
const SEED_CATEGORIES_SQL: &str = "
INSERT INTO categories (id, parent_id, name, slug)
SELECT d, NULL, 'Department ' || d, 'dept-' || d FROM generate_series(1, $1::int) d
UNION ALL
SELECT $1::int + c, 1 + (c - 1) % $1::int, 'Category ' || c, 'cat-' || c FROM generate_series(1, $2::int) c";

/// $1 brands.
const SEED_BRANDS_SQL: &str = "
INSERT INTO brands (id, name, country)
SELECT b, 'Brand ' || b, (ARRAY['DE','US','JP','FR','IT','SE','KR','CN'])[1 + b % 8]
FROM generate_series(1, $1::int) b";

/// $1 products, $2 departments, $3 leaf categories, $4 brands. Categories and brands are spread
/// over the id range (ids are not clustered by category, as in a real catalog).
const SEED_PRODUCTS_SQL: &str = "
INSERT INTO products (id, sku, name, description, price_cents, stock, category_id, brand_id,
                      version, created_at, updated_at)
SELECT i,
       'SKU-' || lpad(i::text, 8, '0'),
       'Product ' || i,
       'Product ' || i || ': '
         || (ARRAY['stainless steel','solid oak','recycled aluminium','borosilicate glass',
                   'carbon fibre','organic cotton'])[1 + i % 6] || ', '
         || (ARRAY['two-year warranty','free returns','ships in 24 h','limited edition',
                   'energy class A','dishwasher safe'])[1 + (i / 6) % 6] || '. '
         || repeat('Designed for everyday use and built to last. ', 4),
       499 + (i * 7919) % 150000,
       (i * 31) % 500,
       $2::int + 1 + ((i * 7) % $3::bigint)::int,
       1 + ((i * 13) % $4::bigint)::int,
       1,
       now() - (i % 1000) * interval '1 day',
       now() - (i % 100) * interval '1 day'
FROM generate_series(1::bigint, $1::bigint) i";

/// $1 reviews, $2 products. Skewed like real traffic: product k gets a share proportional to
/// sqrt(k) - sqrt(k-1), so product 1 has ~1.5k reviews at the article's scale and the median ~4.
const SEED_REVIEWS_SQL: &str = "
INSERT INTO reviews (id, product_id, author, rating, title, body, created_at)
SELECT r, p,
       'user' || (r * 48271) % 250000,
       greatest(1, least(5, round(3.6 + ((p * 7919) % 11 - 5) / 5.0 + (random() - 0.5) * 3.2)))::smallint,
       (ARRAY['Great value','Does the job','Not as described','Love it','Broke after a month',
              'Exactly what I needed','Decent','Would buy again'])[1 + r % 8],
       (ARRAY['Arrived quickly and well packed.','The finish is better than in the photos.',
              'Instructions were unclear.','Works as advertised.','A bit pricey for what it is.',
              'My second one, the first lasted years.'])[1 + r % 6] || ' '
         || (ARRAY['Setup took five minutes.','Customer service was helpful.',
                   'The colour is slightly off.','Quiet and efficient.','Feels solid.',
                   'Battery life is excellent.'])[1 + (r / 6) % 6] || ' '
         || repeat('Overall I am satisfied with the purchase. ', (1 + r % 3)::int),
       now() - ((r * 7) % 525600) * interval '1 minute'
FROM (SELECT r, least($2::bigint, 1 + floor($2::bigint * power(random(), 2.0))::bigint) AS p
      FROM generate_series(1::bigint, $1::bigint) r) g";

/// The indexes a DBA would add for this page (nothing exotic: no covering indexes, no
/// materialized aggregates), then the foreign keys.
const INDEX_SQL: &str = "
CREATE INDEX products_category_idx ON products (category_id);
CREATE INDEX products_brand_idx ON products (brand_id);
CREATE INDEX reviews_product_created_idx ON reviews (product_id, created_at DESC);
ALTER TABLE categories ADD FOREIGN KEY (parent_id) REFERENCES categories (id);
ALTER TABLE products ADD FOREIGN KEY (category_id) REFERENCES categories (id),
                     ADD FOREIGN KEY (brand_id) REFERENCES brands (id);
ALTER TABLE reviews ADD FOREIGN KEY (product_id) REFERENCES products (id);
";
