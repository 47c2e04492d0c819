//! The HTTP/JSON API (architecture.md §8), served by the master process: thin axum handlers over
//! `sutra_grid::api`, which validates and answers. Every error is `{"error": {"code", "message"}}`
//! with its status; bodies past `API_BODY_BYTES_MAX` get 413. Prometheus text at `/metrics`.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use futures_util::StreamExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use sutra_grid::api::{
    self, Api, ApiError, AssociationRef, LearnRequest, NeighborsQuery, ReasonRequest, SearchRequest,
};
use sutra_grid::limits;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    status: u16,
}

struct Metrics {
    registry: Registry,
    requests: Family<RouteLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    /// Mirrors the router's count at each scrape (the lock keeps concurrent scrapes exact).
    resends: Mutex<Counter>,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("sutra_api");
        let requests = Family::<RouteLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            // 50 µs .. ~3.3 s, doubling.
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.000_05, 2.0, 17))
        });
        registry.register("requests", "HTTP requests answered, by route and status", requests.clone());
        registry.register("request_seconds", "HTTP request latency, by route and status", latency.clone());
        let resends = Counter::default();
        registry.register(
            "write_resends",
            "write parts sent again to a new primary or after an unknown outcome",
            resends.clone(),
        );
        Metrics { registry, requests, latency, resends: Mutex::new(resends) }
    }
}

pub struct AppState {
    api: Api,
    metrics: Metrics,
}

/// An API error as an HTTP response.
pub struct Failure(ApiError);

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Failure {
        Failure(e)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Unavailable is a failover or a start in progress: worth a retry in a moment.
            let retry = [(header::RETRY_AFTER, limits::API_RETRY_AFTER_S.to_string())];
            return (status, retry, axum::Json(self.0.body())).into_response();
        }
        (status, axum::Json(self.0.body())).into_response()
    }
}

fn json<T: serde::Serialize>(v: &T) -> Response {
    axum::Json(v).into_response()
}

/// The body of a request that must fit `API_BODY_BYTES_MAX`.
fn body(b: Result<Bytes, axum::extract::rejection::BytesRejection>) -> Result<Bytes, Failure> {
    b.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Failure(ApiError::too_large(format!("request body over {} bytes", limits::API_BODY_BYTES_MAX)))
        } else {
            Failure(ApiError::bad_request("body", e.body_text()))
        }
    })
}

fn query<T>(q: Result<Query<T>, axum::extract::rejection::QueryRejection>) -> Result<T, Failure> {
    q.map(|Query(v)| v).map_err(|e| {
        // serde_urlencoded names the parameter in its message ("unknown field `x`", …).
        let text = e.body_text();
        let text = text.strip_prefix("Failed to deserialize query string: ").unwrap_or(&text).to_string();
        Failure(ApiError::bad_request("query", text))
    })
}

async fn learn(State(s): State<Arc<AppState>>, b: Result<Bytes, axum::extract::rejection::BytesRejection>) -> Response {
    let r = async {
        let req: LearnRequest = api::parse_json(&body(b)?)?;
        Ok::<_, Failure>(json(&s.api.learn(req).await?))
    };
    r.await.unwrap_or_else(IntoResponse::into_response)
}

/// NDJSON in, NDJSON out: each input line is one `/learn` request; each output line is
/// `{"line": n, "result": …}` or `{"line": n, "error": …}`, written as soon as it is known.
async fn learn_batch(State(s): State<Arc<AppState>>, req: Request) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let mut input = req.into_body().into_data_stream();
    tokio::spawn(async move {
        let mut buf: Vec<u8> = Vec::new();
        let mut line_no = 0usize;
        let send_line = |v: serde_json::Value| {
            let mut out = serde_json::to_vec(&v).unwrap_or_default();
            out.push(b'\n');
            Ok(Bytes::from(out))
        };
        let mut eof = false;
        while !eof {
            match input.next().await {
                Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    let e = ApiError::bad_request("body", e);
                    let _ = tx.send(send_line(serde_json::json!({"line": line_no + 1, "error": e}))).await;
                    return;
                }
                None => eof = true,
            }
            if !eof && buf.len() > limits::API_BODY_BYTES_MAX && !buf.contains(&b'\n') {
                let e = ApiError::too_large(format!("line over {} bytes", limits::API_BODY_BYTES_MAX));
                let _ = tx.send(send_line(serde_json::json!({"line": line_no + 1, "error": e}))).await;
                return;
            }
            let mut start = 0;
            let mut lines = Vec::new();
            while let Some(i) = buf[start..].iter().position(|c| *c == b'\n') {
                lines.push(buf[start..start + i].to_vec());
                start += i + 1;
            }
            if eof && start < buf.len() {
                lines.push(buf[start..].to_vec());
                start = buf.len();
            }
            buf.drain(..start);
            for line in lines {
                line_no += 1;
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if line_no > limits::LEARN_BATCH_LINES_MAX {
                    let e = ApiError::too_large(format!("more than {} lines", limits::LEARN_BATCH_LINES_MAX));
                    let _ = tx.send(send_line(serde_json::json!({"line": line_no, "error": e}))).await;
                    return;
                }
                let out = match api::parse_json::<LearnRequest>(&line) {
                    Ok(r) => match s.api.learn(r).await {
                        Ok(v) => serde_json::json!({"line": line_no, "result": v}),
                        Err(e) => serde_json::json!({"line": line_no, "error": e}),
                    },
                    Err(e) => serde_json::json!({"line": line_no, "error": e}),
                };
                if tx.send(send_line(out)).await.is_err() {
                    return; // the client went away
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConceptQuery {
    label: Option<String>,
    consistency: Option<String>,
}

fn consistency(s: Option<&str>) -> Result<sutra_grid::model::Consistency, Failure> {
    api::parse_consistency("consistency", s).map_err(Failure)
}

async fn concept_by_id(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    q: Result<Query<ConceptQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let r = async {
        let q = query(q)?;
        if q.label.is_some() {
            return Err(Failure(ApiError::bad_request("label", "give an id in the path or ?label=, not both")));
        }
        Ok::<_, Failure>(json(&s.api.concept(&id, consistency(q.consistency.as_deref())?).await?))
    };
    r.await.unwrap_or_else(IntoResponse::into_response)
}

async fn concept_by_label(
    State(s): State<Arc<AppState>>,
    q: Result<Query<ConceptQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let r = async {
        let q = query(q)?;
        let label = q.label.ok_or_else(|| Failure(ApiError::bad_request("label", "missing: GET /concepts?label=…")))?;
        Ok::<_, Failure>(json(&s.api.concept(&label, consistency(q.consistency.as_deref())?).await?))
    };
    r.await.unwrap_or_else(IntoResponse::into_response)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ForgetQuery {
    label: Option<String>,
    wait_for: Option<String>,
}

/// `DELETE /concepts/{id}` and `DELETE /concepts?label=…`.
async fn forget_concept(
    State(s): State<Arc<AppState>>,
    id: Option<Path<String>>,
    q: Result<Query<ForgetQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let r = async {
        let q = query(q)?;
        let key = match (id, q.label) {
            (Some(Path(id)), None) => id,
            (None, Some(label)) => label,
            (Some(_), Some(_)) => {
                return Err(Failure(ApiError::bad_request("label", "give an id in the path or ?label=, not both")))
            }
            (None, None) => return Err(Failure(ApiError::bad_request("label", "missing: DELETE /concepts?label=…"))),
        };
        Ok::<_, Failure>(json(&s.api.forget_concept(&key, q.wait_for.as_deref()).await?))
    };
    r.await.unwrap_or_else(IntoResponse::into_response)
}

/// `DELETE /associations` with `{"source", "target", "relation", "kind"?}`.
async fn forget_association(
    State(s): State<Arc<AppState>>,
    b: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let r = async {
        let req: AssociationRef = api::parse_json(&body(b)?)?;
        Ok::<_, Failure>(json(&s.api.forget_association(&req).await?))
    };
    r.await.unwrap_or_else(IntoResponse::into_response)
}

async fn neighbors(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    q: Result<Query<NeighborsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let r = async { Ok::<_, Failure>(json(&s.api.neighbors(&id, &query(q)?).await?)) };
    r.await.unwrap_or_else(IntoResponse::into_response)
}

async fn reason(
    State(s): State<Arc<AppState>>,
    b: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let r = async {
        let req: ReasonRequest = api::parse_json(&body(b)?)?;
        Ok::<_, Failure>(json(&s.api.reason(&req).await?))
    };
    r.await.unwrap_or_else(IntoResponse::into_response)
}

async fn search(
    State(s): State<Arc<AppState>>,
    b: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let r = async {
        let req: SearchRequest = api::parse_json(&body(b)?)?;
        Ok::<_, Failure>(json(&s.api.search(&req).await?))
    };
    r.await.unwrap_or_else(IntoResponse::into_response)
}

async fn cluster_status(State(s): State<Arc<AppState>>) -> Response {
    match s.api.status().await {
        Ok(st) => json(&crate::cluster::status_json(&st)),
        Err(e) => Failure(e).into_response(),
    }
}

async fn healthz() -> Response {
    json(&serde_json::json!({"status": "ok"}))
}

async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    match s.api.ready().await {
        Ok(()) => json(&serde_json::json!({"status": "ready"})),
        Err(e) => Failure(e).into_response(),
    }
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    {
        let c = s.metrics.resends.lock().unwrap_or_else(|p| p.into_inner());
        c.inc_by(s.api.router().write_resends().saturating_sub(c.get()));
    }
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &s.metrics.registry).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], out).into_response()
}

const INDEX: &str = "Sutra Grid API
  POST /learn                      {\"content\": \"Paris is the capital of France.\"} or {\"concepts\": [...], \"associations\": [...]}
  POST /learn/batch                NDJSON: one /learn request per line, one result per line
  GET  /concepts/{id}              by 32-hex id or label
  GET  /concepts?label=Paris
  DELETE /concepts/{id}            by id or label (also ?label=): the concept and its associations
  DELETE /associations             {\"source\", \"target\", \"relation\", \"kind\"?}
  GET  /concepts/{id}/neighbors    ?kind=&relation=&direction=out|in|both&limit=&min_confidence=
  POST /reason                     {\"start\", \"end\", \"max_depth\", \"max_paths\", \"mode\": \"shortest|k_shortest|confident\", ...}
  POST /search                     {\"text\": \"...\", \"k\": 10} or {\"vector\": [...], \"k\": 10}
  GET  /cluster/status  /healthz  /readyz  /metrics
";

async fn index() -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], INDEX).into_response()
}

async fn not_found() -> Response {
    Failure(ApiError::not_found("no such route; GET / lists them")).into_response()
}

async fn method_not_allowed() -> Response {
    let e = ApiError {
        code: "method_not_allowed",
        message: "method not allowed on this route".into(),
        status: 405,
        details: None,
    };
    Failure(e).into_response()
}

async fn record(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "other".into());
    let t0 = Instant::now();
    let resp = next.run(req).await;
    let labels = RouteLabels { route, status: resp.status().as_u16() };
    s.metrics.requests.get_or_create(&labels).inc();
    s.metrics.latency.get_or_create(&labels).observe(t0.elapsed().as_secs_f64());
    resp
}

/// The API's routes over `api`.
pub fn app(api: Api) -> axum::Router {
    let state = Arc::new(AppState { api, metrics: Metrics::new() });
    axum::Router::new()
        .route("/", get(index))
        .route("/learn", post(learn))
        .route("/learn/batch", post(learn_batch))
        .route("/concepts", get(concept_by_label).delete(forget_concept))
        .route("/concepts/{id}", get(concept_by_id).delete(forget_concept))
        .route("/associations", delete(forget_association))
        .route("/concepts/{id}/neighbors", get(neighbors))
        .route("/reason", post(reason))
        .route("/search", post(search))
        .route("/cluster/status", get(cluster_status))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), record))
        .layer(DefaultBodyLimit::max(limits::API_BODY_BYTES_MAX))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    api: Api,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(listener, app(api)).with_graceful_shutdown(shutdown).await?;
    Ok(())
}

/// Connects an [`Api`] to the master at `master` (its router follows the shard map).
pub async fn connect(master: &str, vector_dim: usize) -> anyhow::Result<Api> {
    use anyhow::Context;
    let mc = sutra_grid::client::MasterClient::connect(master)
        .await
        .with_context(|| format!("cannot reach the master at {master}"))?;
    let router = sutra_grid::query::Router::new(mc.clone(), std::time::Duration::from_millis(limits::RPC_DEADLINE_MS))
        .await
        .with_context(|| format!("cannot read the shard map from {master}"))?;
    Ok(Api::new(router, mc, vector_dim))
}

/// A shutdown signal several servers can wait on.
#[derive(Clone)]
pub struct Stop(tokio::sync::watch::Receiver<bool>);

impl Stop {
    /// A stop that fires on SIGINT/SIGTERM, or when the returned sender fires.
    pub fn on_signal() -> (Stop, tokio::sync::watch::Sender<bool>) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let t = tx.clone();
        tokio::spawn(async move {
            crate::shutdown_signal().await;
            let _ = t.send(true);
        });
        (Stop(rx), tx)
    }

    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|v| *v).await;
    }
}
