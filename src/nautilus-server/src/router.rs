//! Routes and the middleware around them.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use serde_json::json;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use std::time::Duration;

use crate::budget::Held;
use crate::clients::ClientKey;
use crate::config::BODY_RATE_GRACE;
use crate::error::EnclaveError;
use crate::state::AppState;
use crate::{app, common, operator};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Largest error body the JSON rewrite reads; axum's own rejection texts are
/// a few hundred bytes.
const MAX_ERROR_BODY: usize = 16 * 1024;

/// The full application: every route, JSON errors, limits, tracing, metrics.
pub fn router(state: Arc<AppState>) -> Router {
    // CORS on each route (around its 405 fallback, which a preflight would
    // otherwise meet), so a preflight for an unknown path is a 404.
    let cors = cors_layer(&state.config().cors_origins);
    let with_cors = |route: MethodRouter<Arc<AppState>>| {
        let route = route.fallback(method_not_allowed);
        match &cors {
            Some(cors) => route.layer(cors.clone()),
            None => route,
        }
    };
    let routes = Router::new()
        .route("/", with_cors(get(common::ping)))
        .route("/health_check", with_cors(get(common::health_check)))
        .route(
            "/get_attestation",
            // HEAD would otherwise run the GET handler: a whole attestation.
            with_cors(get(common::get_attestation).head(common::attestation_head)),
        )
        .route("/manifest", with_cors(get(common::manifest)))
        .route("/process_data", with_cors(post(app::process_data_route)))
        .route("/metrics", with_cors(get(common::metrics)))
        .route("/secrets/nonce", with_cors(get(operator::nonce)))
        .route("/secrets", with_cors(post(operator::put)));
    let routes = routes.fallback(not_found).with_state(Arc::clone(&state));

    routes
        .layer(CatchPanicLayer::custom(|_| {
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }))
        // `buffer_body` has read and bounded the whole body already.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            buffer_body,
        ))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            client_requests,
        ))
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn_with_state(state, track_requests))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let id = req
                        .headers()
                        .get(&REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path())
                })
                // Not ERROR per 5xx: shed requests (503) are counted in
                // /metrics, and a flood of them must not become a flood of
                // log lines. Real faults are logged where they happen.
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

/// Counts every request by route and final status.
async fn track_requests(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(req).await;
    state.metrics.request(endpoint, response.status().as_u16());
    response
}

fn cors_layer(origins: &[HeaderValue]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    // tower-http refuses `*` inside a list (it panics); it means "any".
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().cloned())
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::CONTENT_TYPE]),
    )
}

async fn not_found(method: Method, uri: Uri) -> Response {
    let msg = format!("no route for {method} {}", uri.path());
    (StatusCode::NOT_FOUND, Json(json!({ "error": msg }))).into_response()
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let msg = format!("method {method} is not allowed on {}", uri.path());
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(json!({ "error": msg })),
    )
        .into_response()
}

/// Counts each request against its client's share of requests in flight
/// (429 past it); requests without a client (handlers called in-process)
/// are not counted.
async fn client_requests(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(client) = req.extensions().get::<ClientKey>().copied() else {
        return next.run(req).await;
    };
    match state.clients.request(client) {
        Ok(share) => {
            let response = next.run(req).await;
            drop(share);
            response
        }
        Err(over) => EnclaveError::from(over).into_response(),
    }
}

/// Rewrites every non-JSON error (axum's extractor rejections, the body
/// limit, panics) as `{"error": ...}`, so clients parse one error shape.
/// Unparseable JSON bodies are client errors: axum's 422 becomes 400.
async fn json_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&response) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_ERROR_BODY)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let msg = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    if status == StatusCode::UNPROCESSABLE_ENTITY {
        parts.status = StatusCode::BAD_REQUEST;
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let body = json!({ "error": msg }).to_string();
    Response::from_parts(parts, Body::from(body))
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// Reads the whole request body before any handler sees it, within bounds:
/// a declared `Content-Length` over the limit is refused before anything is
/// read (413); so is a body that grows past it (chunked, HTTP/2: 413); the
/// body must be complete within the body deadline (408); and every byte held
/// counts against the server-wide body budget, which, when used up, refuses
/// the request at once (503, `Retry-After`) instead of reading more. The
/// budget is held until the response is ready, so queued requests count too.
async fn buffer_body(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    use axum::body::HttpBody;
    let (parts, body) = req.into_parts();
    if body.is_end_stream() {
        return next.run(Request::from_parts(parts, body)).await;
    }
    match read_body(&state, &parts.headers, body).await {
        Ok((bytes, held)) => {
            let response = next
                .run(Request::from_parts(parts, Body::from(bytes)))
                .await;
            drop(held);
            response
        }
        Err(e) => {
            if matches!(e, EnclaveError::BodyBudget) {
                state.metrics.body_budget_exhausted();
            }
            e.into_response()
        }
    }
}

/// Budget is taken in steps of at least this much, not per frame.
const BUDGET_STEP: usize = 64 * 1024;

/// Reads the body. Nothing of the budget is taken before the first byte; a
/// declared length is then taken whole (one exact allocation), a chunked
/// body in growing steps, charged by what is allocated. Past the grace
/// period the body must keep up the minimum rate.
async fn read_body(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    mut body: Body,
) -> Result<(axum::body::Bytes, Held), EnclaveError> {
    use http_body_util::BodyExt;
    let max = state.config().max_body_bytes;
    let timeout = state.config().http.body_timeout;
    let min_rate = state.config().http.min_body_bytes_per_sec.max(1);
    let start = tokio::time::Instant::now();
    let deadline = start + timeout;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(EnclaveError::BodyTooLarge(max));
    }
    let declared = declared.map(|n| n as usize);
    let mut held = Held::default();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // Bytes received buy time past the grace period at the minimum rate.
        let paid = BODY_RATE_GRACE + Duration::from_secs_f64(buf.len() as f64 / min_rate as f64);
        let next = deadline.min(start + paid);
        let frame = match tokio::time::timeout_at(next, body.frame()).await {
            Err(_) if next >= deadline => return Err(EnclaveError::BodyTimeout(timeout.as_secs())),
            Err(_) => return Err(EnclaveError::BodyTooSlow(min_rate)),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(EnclaveError::BodyRead(e.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        // Trailers carry nothing the API uses.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let total = buf.len() + data.len();
        if total > max {
            return Err(EnclaveError::BodyTooLarge(max));
        }
        if total > buf.capacity() {
            let room = match declared {
                Some(d) if d >= total => d,
                // Chunked (or longer than declared, which hyper refuses):
                // double, so a body is reallocated a few times at most.
                _ => total.max(buf.capacity() * 2).max(BUDGET_STEP).min(max),
            };
            if !state.body_budget.grow(&mut held, room) {
                return Err(EnclaveError::BodyBudget);
            }
            buf.reserve_exact(room - buf.len());
        }
        // Copied, not kept: a frame may pin a much larger receive buffer.
        buf.extend_from_slice(&data);
    }
    Ok((buf.into(), held))
}
