//! The HTTP client of the CLI.

use super::CliError;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// Talks to one node's API.
pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    /// A client for `base` (e.g. `http://127.0.0.1:7070`), with the token
    /// from `token_file` or `SHOAL_TOKEN`.
    pub fn new(base: &str, token_file: Option<&Path>) -> Result<Client, CliError> {
        let token = match token_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| {
                        CliError::usage(format!("cannot read token file {}: {e}", p.display()))
                    })?
                    .trim()
                    .to_owned(),
            ),
            None => std::env::var("SHOAL_TOKEN").ok(),
        };
        let base = if base.starts_with("http://") || base.starts_with("https://") {
            base.trim_end_matches('/').to_owned()
        } else {
            format!("http://{}", base.trim_end_matches('/'))
        };
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout_read(Duration::from_secs(120))
            .build();
        Ok(Client { base, token, agent })
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let mut req = self
            .agent
            .request(method, &format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        req
    }

    /// Sends a request; returns the JSON body (Null for an empty one).
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, CliError> {
        let req = self.request(method, path);
        let resp = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match resp {
            Ok(r) => {
                let text = r.into_string().map_err(|e| CliError::failed(format!("reading the answer: {e}")))?;
                if text.trim().is_empty() {
                    Ok(Value::Null)
                } else {
                    serde_json::from_str(&text).map_err(|e| CliError::failed(format!("the node answered non-JSON: {e}")))
                }
            }
            Err(ureq::Error::Status(code, r)) => {
                let body: Value = r.into_json().unwrap_or(Value::Null);
                let msg = body["error"]["message"].as_str().map(str::to_owned).unwrap_or_else(|| body.to_string());
                Err(CliError::failed(format!("{msg} (HTTP {code})")))
            }
            Err(ureq::Error::Transport(t)) => Err(CliError::failed(format!(
                "cannot reach the node at {}: {t} (is `shoal start` running? set --api or SHOAL_API)",
                self.base
            ))),
        }
    }

    /// Opens a streaming GET (for server-sent events).
    pub fn stream(&self, path: &str) -> Result<Box<dyn std::io::Read + Send + Sync>, CliError> {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .build();
        let mut req = agent.get(&format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        req.call()
            .map(|r| r.into_reader())
            .map_err(|e| CliError::failed(format!("cannot open {path}: {e}")))
    }
}
