//! OpenAI request bodies, their validation into engine options, and error objects.
//!
//! Bodies are parsed in two steps (JSON syntax, then the typed shape) so that a client hears
//! which of the two was wrong and, for the second, which field. Unknown fields are ignored, as
//! OpenAI's clients send fields this server has no use for.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bitnet_engine::{ChatMessage, GenerateOptions, SamplingOptions};
use serde::Deserialize;
use serde_json::json;

/// Most stop strings a request may give.
const MAX_STOPS: usize = 16;

/// An error answered as OpenAI does: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub(crate) fn param(mut self, p: impl Into<String>) -> Self {
        self.param = Some(p.into());
        self
    }

    pub(crate) fn code(mut self, c: &'static str) -> Self {
        self.code = Some(c);
        self
    }

    pub(crate) fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

/// `stop`: one string or a list.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub(crate) enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Debug, Default)]
pub(crate) struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Fields shared by both endpoints.
#[derive(Deserialize, Debug, Default)]
pub(crate) struct Common {
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u64>,
    pub min_p: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub n: Option<u64>,
}

/// Message content: a string, or a list of parts of which the text ones are joined.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub(crate) enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize, Debug)]
pub(crate) struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Deserialize, Debug)]
pub(crate) struct Message {
    pub role: String,
    pub content: Option<Content>,
}

#[derive(Deserialize, Debug)]
pub(crate) struct ChatRequest {
    pub messages: Vec<Message>,
    #[serde(flatten)]
    pub common: Common,
}

/// `prompt`: a string, or a list holding one string.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub(crate) enum PromptField {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Debug)]
pub(crate) struct CompletionRequest {
    pub prompt: PromptField,
    #[serde(flatten)]
    pub common: Common,
}

/// Parses a body: syntax errors and shape errors are both 400s, told apart in the message.
pub(crate) fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("the request body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::invalid("the request body must be a JSON object"));
    }
    serde_json::from_value(value).map_err(|e| ApiError::invalid(format!("invalid request: {e}")))
}

impl ChatRequest {
    pub(crate) fn messages(&self) -> Result<Vec<ChatMessage>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid("messages must not be empty").param("messages"));
        }
        let mut out = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.iter().enumerate() {
            let content = match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => {
                    let mut s = String::new();
                    for p in parts {
                        if p.kind != "text" {
                            return Err(ApiError::invalid(format!(
                                "messages[{i}]: content part type '{}' is not supported (only text)",
                                p.kind
                            ))
                            .param(format!("messages[{i}].content")));
                        }
                        s.push_str(p.text.as_deref().unwrap_or_default());
                    }
                    s
                }
            };
            out.push(ChatMessage::new(m.role.clone(), content));
        }
        Ok(out)
    }
}

impl CompletionRequest {
    pub(crate) fn prompt(&self) -> Result<String, ApiError> {
        match &self.prompt {
            PromptField::One(s) => Ok(s.clone()),
            PromptField::Many(v) if v.len() == 1 => Ok(v[0].clone()),
            PromptField::Many(_) => Err(ApiError::invalid(
                "prompt must be a string or a list of exactly one string (batches of prompts are not supported)",
            )
            .param("prompt")),
        }
    }
}

impl Common {
    pub(crate) fn stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    pub(crate) fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }

    /// The engine options; `max_tokens` is left to the caller when the request gives none.
    pub(crate) fn options(&self) -> Result<(GenerateOptions, Option<usize>), ApiError> {
        if let Some(n) = self.n
            && n != 1
        {
            return Err(ApiError::invalid(format!(
                "n = {n} is not supported: this server returns one choice per request (n = 1)"
            ))
            .param("n"));
        }
        let max = self.max_completion_tokens.or(self.max_tokens);
        if max == Some(0) {
            let p = if self.max_completion_tokens.is_some() {
                "max_completion_tokens"
            } else {
                "max_tokens"
            };
            return Err(ApiError::invalid(format!("{p} must be at least 1")).param(p));
        }
        let range = |name: &'static str, v: Option<f32>, lo: f32, hi: f32| match v {
            Some(x) if !(x.is_finite() && (lo..=hi).contains(&x)) => Err(ApiError::invalid(
                format!("{name} must be between {lo} and {hi}, got {x}"),
            )
            .param(name)),
            _ => Ok(()),
        };
        range("temperature", self.temperature, 0.0, 2.0)?;
        range("top_p", self.top_p, 0.0, 1.0)?;
        range("min_p", self.min_p, 0.0, 1.0)?;
        range("presence_penalty", self.presence_penalty, -2.0, 2.0)?;
        range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)?;
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > MAX_STOPS {
            return Err(ApiError::invalid(format!(
                "at most {MAX_STOPS} stop strings are allowed, got {}",
                stop.len()
            ))
            .param("stop"));
        }
        let d = SamplingOptions::default();
        let sampling = SamplingOptions {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_k: self
                .top_k
                .map(|k| usize::try_from(k).unwrap_or(usize::MAX))
                .unwrap_or(d.top_k),
            top_p: self.top_p.unwrap_or(d.top_p),
            min_p: self.min_p.unwrap_or(d.min_p),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            seed: self.seed,
            ..d
        };
        sampling.validate().map_err(ApiError::invalid)?;
        let max = max.map(|m| usize::try_from(m).unwrap_or(usize::MAX));
        let opts = GenerateOptions {
            max_tokens: max.unwrap_or(0),
            sampling,
            stop,
            ..GenerateOptions::default()
        };
        Ok((opts, max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openai_shapes_and_ignores_unknown_fields() {
        let r: ChatRequest = parse(
            br#"{"model":"x","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],
                 "stop":"END","max_completion_tokens":5,"logit_bias":{},"user":"u"}"#,
        )
        .unwrap();
        assert_eq!(r.messages().unwrap(), vec![ChatMessage::user("hi")]);
        let (o, max) = r.common.options().unwrap();
        assert_eq!((o.stop, max), (vec!["END".to_string()], Some(5)));
        let r: CompletionRequest = parse(br#"{"prompt":["a"],"stop":["x","y"]}"#).unwrap();
        assert_eq!(r.prompt().unwrap(), "a");
        assert_eq!(r.common.options().unwrap().0.stop.len(), 2);
    }

    #[test]
    fn rejects_bad_values_naming_the_field() {
        let e = parse::<CompletionRequest>(br#"{"prompt":"a","max_tokens":"many"}"#).unwrap_err();
        assert!(e.message.contains("invalid request"), "{}", e.message);
        let e = parse::<CompletionRequest>(b"{not json").unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
        let r: CompletionRequest = parse(br#"{"prompt":"a","n":2}"#).unwrap();
        assert_eq!(r.common.options().unwrap_err().param.as_deref(), Some("n"));
        let r: CompletionRequest = parse(br#"{"prompt":"a","temperature":7}"#).unwrap();
        assert_eq!(
            r.common.options().unwrap_err().param.as_deref(),
            Some("temperature")
        );
    }
}
