//! The gateway's REST API as a test calls it.

use reqwest::Response;
use serde_json::Value;

use crate::Stack;

/// The JSON body of `response`, whatever its status.
pub async fn json_of(response: Response) -> Value {
    response.json().await.unwrap()
}

/// Polls `<base>/readyz` through `client` until a gateway there answers 200
/// (within 30 s).
pub async fn wait_ready_at(client: &reqwest::Client, base: &str) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Ok(response) = client.get(format!("{base}/readyz")).send().await
            && response.status() == 200
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway at {base} never became ready"
        );
        // Polling a readiness endpoint: there is nothing to await instead.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// The status, `error.code` and `error.message` of a JSON error response.
pub async fn error_of(response: Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let body = json_of(response).await;
    (
        status,
        body["error"]["code"].as_str().unwrap().to_owned(),
        body["error"]["message"].as_str().unwrap().to_owned(),
    )
}

impl Stack {
    /// `GET <path>` on the gateway without credentials.
    pub async fn get(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// `GET <path>` on the gateway bearing `token`.
    pub async fn get_as(&self, path: &str, token: &str) -> Response {
        let request = self.client.get(self.url(path)).bearer_auth(token);
        request.send().await.unwrap()
    }

    /// The JSON body of `GET <path>` bearing `token`.
    pub async fn get_json(&self, path: &str, token: &str) -> Value {
        json_of(self.get_as(path, token).await).await
    }

    /// The SSE stream of `symbols` (comma-separated) bearing `token`, resuming
    /// after `last_event_id`.
    pub async fn sse_after(&self, symbols: &str, token: &str, last_event_id: &str) -> Response {
        let url = self.url(&format!("/v1/rates/stream?symbols={symbols}"));
        let request = self.client.get(url).bearer_auth(token);
        let request = request.header("last-event-id", last_event_id);
        request.send().await.unwrap()
    }

    /// `POST <path>` on the gateway without credentials or body.
    pub async fn post(&self, path: &str) -> Response {
        self.client.post(self.url(path)).send().await.unwrap()
    }

    /// `POST <path>` on the gateway bearing `token`, with `body` as JSON.
    pub async fn post_as(&self, path: &str, token: &str, body: &Value) -> Response {
        let request = self.client.post(self.url(path)).bearer_auth(token);
        request.json(body).send().await.unwrap()
    }
}
