//! The HTTP service: `GET /products/{id}` (the product page) and `PUT /products/{id}`.

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    http::{HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use cache_layer::CacheLayer;
use serde::{Deserialize, Serialize};

use super::catalog::{Catalog, ProductDetails, ProductUpdate, TopProduct};

/// The product page: the product and its category's best-rated products.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductPage {
    pub product: ProductDetails,
    pub top_in_category: Vec<TopProduct>,
}

/// The service over a catalog (cached or not), optionally with whole responses of the read route
/// cached by `CacheLayer` (tagged like the data, so a PUT's invalidation drops both).
pub fn router(catalog: Arc<Catalog>, http_cache: Option<CacheLayer>) -> Router {
    let read = get(get_product);
    // `MethodRouter::layer` wraps the routes added so far: the GET, not the PUT.
    let read = match http_cache {
        Some(layer) => read.layer(layer),
        None => read,
    };
    Router::new()
        .route("/products/{id}", read.put(put_product))
        .with_state(catalog)
}

/// Errors of the request path: never a panic, always a status.
#[derive(Debug)]
pub enum AppError {
    NotFound,
    BadRequest(&'static str),
    Database(sqlx::Error),
}

impl From<sqlx::Error> for AppError {
    fn from(error: sqlx::Error) -> Self {
        AppError::Database(error)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            AppError::NotFound => (StatusCode::NOT_FOUND, "no such product".to_string()),
            AppError::BadRequest(why) => (StatusCode::BAD_REQUEST, why.to_string()),
            AppError::Database(error) => {
                eprintln!("product_api: database error: {error}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "database error".to_string(),
                )
            }
        };
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}

async fn get_product(
    State(catalog): State<Arc<Catalog>>,
    Path(id): Path<i64>,
) -> Result<Response, AppError> {
    let product = catalog.product(id).await?.ok_or(AppError::NotFound)?;
    let category_id = product.category.id;
    let top_in_category = catalog.top_in_category(category_id).await?;
    let mut response = Json(ProductPage {
        product,
        top_in_category,
    })
    .into_response();
    // The tags of the whole response, for an HTTP cache in front (`CacheLayer` reads and strips
    // them): the same tags the data-access fns carry, so one invalidation drops both.
    if let Ok(tags) = HeaderValue::from_str(&format!("product:{id}, category:{category_id}")) {
        response.headers_mut().insert("cache-tag", tags);
    }
    Ok(response)
}

async fn put_product(
    State(catalog): State<Arc<Catalog>>,
    Path(id): Path<i64>,
    Json(update): Json<ProductUpdate>,
) -> Result<Response, AppError> {
    if update.name.trim().is_empty() || update.name.len() > 200 {
        return Err(AppError::BadRequest("name must be 1 to 200 bytes"));
    }
    if update.price_cents < 0 || update.stock < 0 {
        return Err(AppError::BadRequest("price_cents and stock must be >= 0"));
    }
    let updated = catalog
        .update(id, &update)
        .await?
        .ok_or(AppError::NotFound)?;
    Ok(Json(updated).into_response())
}
