//! One webhook delivery attempt over HTTP: the body POSTed to its URL, signed per the Standard
//! Webhooks spec (`webhook-id`, `webhook-timestamp` = this attempt's Unix seconds,
//! `webhook-signature` = `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` keyed by the
//! base64-decoded part of the `whsec_` secret, computed by the `standardwebhooks` reference
//! crate). The queue, retries and the delivery log are the engine's (`engine/webhooks.rs`).
//!
//! A callback URL gets the media URLs' SSRF rules ([`InputPolicy::check_fetch_url`] before
//! sending and every DNS answer through the download's checked resolver); redirects are not
//! followed (a 3xx is a failed attempt). A configured endpoint is the operator's own and
//! skips the allow-list.

use std::sync::Arc;
use std::time::Duration;

use url::Url;

use super::download::direct::{error_chain, CheckedResolver};
use crate::domain::input::InputPolicy;
use crate::domain::webhook::Secret;

/// One message to send: its id, target and exact body.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    /// The message id (`webhook-id`), the same on every attempt.
    pub id: &'a str,
    /// The target URL.
    pub url: &'a str,
    /// The JSON body, sent byte for byte as signed.
    pub body: &'a str,
    /// Check the target against the allow-list and private-address rules (a callback URL).
    pub checked: bool,
}

/// Why an attempt did not deliver: one sentence, cause first, and the endpoint's HTTP status
/// when it answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct NotDelivered {
    /// E.g. `the endpoint answered HTTP 500 Internal Server Error`.
    pub message: String,
    /// The endpoint's status, when it answered.
    pub status: Option<u16>,
    /// True when no later attempt can succeed (a refused URL, a secret that cannot sign).
    pub permanent: bool,
}

impl NotDelivered {
    fn retryable(message: String, status: Option<u16>) -> Self {
        Self {
            message,
            status,
            permanent: false,
        }
    }
    fn permanent(message: String) -> Self {
        Self {
            message,
            status: None,
            permanent: true,
        }
    }
}

/// The three Standard Webhooks headers of `msg` signed with `secret` at `timestamp` (Unix
/// seconds).
///
/// # Errors
/// A body that is not UTF-8 or a secret that does not decode (checked when configured).
pub fn sign(
    secret: &Secret,
    msg: &Message<'_>,
    timestamp: i64,
) -> Result<[(&'static str, String); 3], NotDelivered> {
    let signer = standardwebhooks::Webhook::new(secret.expose())
        .map_err(|e| NotDelivered::permanent(format!("the webhook secret cannot sign: {e}")))?;
    let signature = signer
        .sign(msg.id, timestamp, msg.body.as_bytes())
        .map_err(|e| NotDelivered::permanent(format!("the webhook body cannot be signed: {e}")))?;
    Ok([
        (standardwebhooks::HEADER_WEBHOOK_ID, msg.id.to_string()),
        (
            standardwebhooks::HEADER_WEBHOOK_TIMESTAMP,
            timestamp.to_string(),
        ),
        (standardwebhooks::HEADER_WEBHOOK_SIGNATURE, signature),
    ])
}

/// POSTs `msg` once, signed with `secret`, within `timeout`; `Ok(status)` for a 2xx answer.
///
/// # Errors
/// [`NotDelivered`]: permanent for a URL the policy refuses or an unusable secret; retryable
/// for any other status (3xx included), a timeout or a network error.
pub async fn post(
    secret: &Secret,
    policy: &InputPolicy,
    msg: &Message<'_>,
    timeout: Duration,
) -> Result<u16, NotDelivered> {
    let url = Url::parse(msg.url)
        .map_err(|e| NotDelivered::permanent(format!("invalid webhook URL {}: {e}", msg.url)))?;
    let mut client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .user_agent(concat!("tubescribe/", env!("CARGO_PKG_VERSION")));
    if msg.checked {
        policy
            .check_fetch_url(&url)
            .map_err(|e| NotDelivered::permanent(format!("callback URL {url} is refused: {e}")))?;
        client = client.dns_resolver(Arc::new(CheckedResolver::new(policy.clone())));
    }
    let client = client
        .build()
        .map_err(|e| NotDelivered::permanent(format!("HTTP client: {e}")))?;
    let now = chrono::Utc::now().timestamp();
    let mut req = client
        .post(url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(msg.body.to_string());
    for (k, v) in sign(secret, msg, now)? {
        req = req.header(k, v);
    }
    let resp = req.send().await.map_err(|e| {
        let why = if e.is_timeout() {
            format!("no answer within {} s", timeout.as_secs_f64())
        } else {
            error_chain(&e)
        };
        NotDelivered::retryable(
            format!("the webhook to {url} was not delivered: {why}"),
            None,
        )
    })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(status.as_u16());
    }
    Err(NotDelivered::retryable(
        format!(
            "the endpoint answered HTTP {} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )
        .trim_end()
        .to_string(),
        Some(status.as_u16()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_reference_vector() {
        // The Standard Webhooks libraries' own test vector.
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let msg = Message {
            id: "msg_p5jXN8AQM9LWM0D4loKWxJek",
            url: "http://127.0.0.1/",
            body: r#"{"test": 2432232314}"#,
            checked: true,
        };
        let h = sign(&secret, &msg, 1614265330).unwrap();
        assert_eq!(h[0], ("webhook-id", msg.id.to_string()));
        assert_eq!(h[1], ("webhook-timestamp", "1614265330".to_string()));
        assert_eq!(
            h[2],
            (
                "webhook-signature",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".to_string()
            )
        );
    }

    #[tokio::test]
    async fn a_callback_off_the_allow_list_is_refused_before_sending() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let msg = Message {
            id: "msg_1",
            url: "http://127.0.0.1:9/hook",
            body: "{}",
            checked: true,
        };
        let e = post(
            &secret,
            &InputPolicy::default(),
            &msg,
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(e.permanent, "{e:?}");
        assert!(e.message.contains("loopback"), "{}", e.message);
    }
}
