//! A small HTTP/1 JSON client for the coordinator's API (the CLI's and the agents'), on hyper's
//! client connection: one connection per request, which is plenty for a heartbeat every 500 ms.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Where the coordinator is and how to prove who we are.
#[derive(Clone, Debug)]
pub struct Client {
    /// As given: `http://HOST:PORT`.
    pub url: String,
    authority: String,
    token: Option<String>,
}

/// An answer that is not a 2xx: its status and the coordinator's `error` message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (HTTP {})", self.message, self.status.as_u16())
    }
}

impl std::error::Error for ApiError {}

impl Client {
    /// A client of the coordinator at `url` (`http://HOST:PORT`, an optional trailing `/`).
    pub fn new(url: &str, token: Option<String>) -> Result<Client> {
        let Some(rest) = url.strip_prefix("http://") else {
            bail!("{url:?} is not a coordinator URL: give http://HOST:PORT (https is not supported: keep the coordinator on a private network)");
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') || !authority.contains(':') {
            bail!("{url:?} is not a coordinator URL: give http://HOST:PORT");
        }
        Ok(Client { url: format!("http://{authority}"), authority: authority.to_string(), token })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str, timeout: Duration) -> Result<T> {
        self.request(Method::GET, path, None::<&()>, timeout).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B, timeout: Duration) -> Result<T> {
        self.request(Method::POST, path, Some(body), timeout).await
    }

    /// Sends one request and reads its JSON answer; a non-2xx answer is an [`ApiError`].
    async fn request<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<T> {
        let payload = match body {
            Some(b) => Some((serde_json::to_vec(b)?, "application/json")),
            None => None,
        };
        let bytes = self.send(method, path, payload, timeout).await?;
        serde_json::from_slice(&bytes).with_context(|| format!("the coordinator at {} answered {path} with unexpected JSON", self.url))
    }

    /// POSTs raw bytes (a job binary) and reads the JSON answer.
    pub async fn post_bytes<T: DeserializeOwned>(&self, path: &str, bytes: Vec<u8>, timeout: Duration) -> Result<T> {
        let answer = self.send(Method::POST, path, Some((bytes, "application/octet-stream")), timeout).await?;
        serde_json::from_slice(&answer).with_context(|| format!("the coordinator at {} answered {path} with unexpected JSON", self.url))
    }

    /// GETs raw bytes (a job binary).
    pub async fn get_bytes(&self, path: &str, timeout: Duration) -> Result<Bytes> {
        self.send(Method::GET, path, None, timeout).await
    }

    /// One exchange within `timeout`: the answer's body, or an [`ApiError`] for a non-2xx status.
    async fn send(&self, method: Method, path: &str, payload: Option<(Vec<u8>, &str)>, timeout: Duration) -> Result<Bytes> {
        let exchange = self.exchange(method, path, payload);
        let (status, bytes) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| anyhow!("the coordinator at {} did not answer {path} within {timeout:?}", self.url))??;
        if !status.is_success() {
            let message = serde_json::from_slice::<crate::api::ErrorAnswer>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).trim().to_string());
            return Err(ApiError { status, message }.into());
        }
        Ok(bytes)
    }

    async fn exchange(&self, method: Method, path: &str, payload: Option<(Vec<u8>, &str)>) -> Result<(StatusCode, Bytes)> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .with_context(|| format!("cannot reach the coordinator at {}", self.url))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("cannot speak HTTP to the coordinator at {}", self.url))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut request = Request::builder().method(method).uri(path).header(hyper::header::HOST, &self.authority);
        let body = match payload {
            Some((bytes, content_type)) => {
                request = request.header(hyper::header::CONTENT_TYPE, content_type);
                bytes
            }
            None => Vec::new(),
        };
        if let Some(token) = &self.token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Full::new(Bytes::from(body)))?;
        let response = sender.send_request(request).await.with_context(|| format!("request {path} to {} failed", self.url))?;
        let status = response.status();
        let bytes =
            response.into_body().collect().await.with_context(|| format!("reading the answer to {path} from {}", self.url))?.to_bytes();
        Ok((status, bytes))
    }
}

/// The [`ApiError`] inside `error`, if that is what it is.
pub fn api_error(error: &anyhow::Error) -> Option<&ApiError> {
    error.downcast_ref::<ApiError>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(Client::new("http://127.0.0.1:7070/", None).unwrap().url, "http://127.0.0.1:7070");
        assert!(Client::new("127.0.0.1:7070", None).is_err());
        assert!(Client::new("https://x:1", None).is_err());
        assert!(Client::new("http://x:1/api", None).is_err());
    }
}
