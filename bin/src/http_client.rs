//! A small HTTP/1.1 client for the API (CLI verbs, importers, `bench api`): keep-alive
//! connections from hyper's pooled client, JSON in and out, API errors turned into messages.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Percent-encodes one path segment or query value (RFC 3986 unreserved bytes pass).
pub fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Clone)]
pub struct HttpClient {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl HttpClient {
    /// `api` is `http://host:port` or `host:port`.
    pub fn new(api: &str) -> Result<HttpClient> {
        let base = api.trim_end_matches('/');
        let base = if base.contains("://") { base.to_string() } else { format!("http://{base}") };
        if !base.starts_with("http://") {
            bail!("--api {api}: only http:// is served");
        }
        base.parse::<hyper::Uri>().with_context(|| format!("--api {api} is not a URL"))?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(64).build(connector);
        Ok(HttpClient { base, client, timeout: Duration::from_secs(60) })
    }

    /// One request; returns the status and the body.
    pub async fn send(&self, method: hyper::Method, path: &str, body: Option<Vec<u8>>) -> Result<(u16, Bytes)> {
        let uri = format!("{}{}", self.base, path);
        let mut req = hyper::Request::builder().method(method).uri(&uri);
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let fut = async {
            let resp = self.client.request(req).await?;
            let status = resp.status().as_u16();
            let bytes = resp.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>((status, bytes))
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| anyhow!("{uri}: no answer within {} s", self.timeout.as_secs()))?
            .with_context(|| {
                format!("cannot reach the API at {}; is `sutra dev` running? (--api sets the address)", self.base)
            })
    }

    /// A JSON call: the parsed answer, or the API's error message.
    pub async fn json(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let body = body.map(serde_json::to_vec).transpose()?;
        let (status, bytes) = self.send(method, path, body).await?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).with_context(|| {
            format!("HTTP {status} with a body that is not JSON: {}", String::from_utf8_lossy(&bytes))
        })?;
        if status >= 400 {
            let msg = v["error"]["message"].as_str().unwrap_or("(no message)");
            let code = v["error"]["code"].as_str().unwrap_or("error");
            bail!("{msg} (HTTP {status}, {code})");
        }
        Ok(v)
    }

    pub async fn get(&self, path: &str) -> Result<serde_json::Value> {
        self.json(hyper::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &serde_json::Value) -> Result<serde_json::Value> {
        self.json(hyper::Method::POST, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str, body: Option<&serde_json::Value>) -> Result<serde_json::Value> {
        self.json(hyper::Method::DELETE, path, body).await
    }
}
