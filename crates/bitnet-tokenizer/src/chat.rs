//! Chat templates: HF-style Jinja templates rendered with minijinja in the environment HF's
//! `apply_chat_template` provides (trim_blocks + lstrip_blocks, Python string/dict methods,
//! `raise_exception`, Python-compatible `tojson`, `strftime_now`, `namespace`), plus the
//! built-in BitNet b1.58 2B4T template.

use std::fmt::Write as _;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TokenizerError};

/// The `chat_template` of microsoft/bitnet-b1.58-2B-4T's tokenizer_config.json. It writes no
/// BOS: the tokenizer adds `<|begin_of_text|>` when encoding (use
/// [`crate::Tokenizer::encode_chat_prompt`]), giving
/// `<|begin_of_text|>User: {msg}<|eot_id|>Assistant: `.
pub const BITNET_2B4T_CHAT_TEMPLATE: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = message['role'] | capitalize + ': '+ message['content'] | trim + '<|eot_id|>' %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}";

const TEMPLATE_NAME: &str = "chat_template";

/// One chat turn as HF templates see it (`message['role']`, `message['content']`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant` (templates may accept others).
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with any role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// A compiled chat template. Compiling once up front reports syntax errors at load time
/// instead of at the first request.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .finish()
    }
}

fn template_error(what: &str, err: &Error) -> TokenizerError {
    let mut msg = format!("{what}: {err}");
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        let _ = write!(msg, ": {s}");
        source = s.source();
    }
    TokenizerError::ChatTemplate(msg)
}

impl ChatTemplate {
    /// Compiles a Jinja chat template (e.g. [`crate::Tokenizer::chat_template`]).
    pub fn new(source: &str) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| template_error("configuring the template syntax", &e))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        minijinja_contrib::add_to_environment(&mut env);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| template_error("invalid template", &e))?;
        Ok(ChatTemplate {
            env,
            source: source.to_string(),
        })
    }

    /// The built-in BitNet b1.58 2B4T template ([`BITNET_2B4T_CHAT_TEMPLATE`]), for GGUF files
    /// whose embedded template is missing or wrong.
    pub fn builtin_bitnet_2b4t() -> Self {
        match Self::new(BITNET_2B4T_CHAT_TEMPLATE) {
            Ok(t) => t,
            // The constant is covered by tests; an environment without templates still renders
            // nothing wrong, it just fails at render time with a clear error.
            Err(_) => ChatTemplate {
                env: Environment::new(),
                source: BITNET_2B4T_CHAT_TEMPLATE.to_string(),
            },
        }
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders the conversation. `add_generation_prompt` appends the assistant prefix the model
    /// continues from; `bos_token`/`eos_token` are the texts templates refer to.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| template_error("template not compiled", &e))?;
        let ctx = minijinja::context! {
            messages => Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => bos_token,
            eos_token => eos_token,
        };
        template
            .render(ctx)
            .map_err(|e| template_error("render failed", &e))
    }
}

/// HF's `raise_exception(msg)`: templates use it to reject conversations they cannot format.
fn raise_exception(msg: String) -> std::result::Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("template raised an exception: {msg}"),
    ))
}

/// HF's `strftime_now(format)` (Llama 3.1+ templates put today's date in the system prompt).
/// UTC; supports %Y %y %m %d %e %j %H %I %M %S %p %a %A %b %B %h %F %T %%.
fn strftime_now(format: String) -> std::result::Result<Value, Error> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    strftime(&format, secs).map(Value::from)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn strftime(format: &str, unix_secs: u64) -> std::result::Result<String, Error> {
    let days = (unix_secs / 86_400) as i64;
    let secs_of_day = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs_of_day / 3600, secs_of_day / 60 % 60, secs_of_day % 60);
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let weekday = (days + 3).rem_euclid(7) as usize;
    let is_leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let cumulative = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cumulative.get(month as usize - 1).copied().unwrap_or(0)
        + day
        + u32::from(is_leap && month > 2);
    let month_name = MONTHS.get(month as usize - 1).copied().unwrap_or("");
    let weekday_name = WEEKDAYS.get(weekday).copied().unwrap_or("");
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };

    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let spec = chars.next().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidOperation,
                "strftime_now: format ends with '%'",
            )
        })?;
        let _ = match spec {
            'Y' => write!(out, "{year}"),
            'y' => write!(out, "{:02}", year.rem_euclid(100)),
            'm' => write!(out, "{month:02}"),
            'd' => write!(out, "{day:02}"),
            'e' => write!(out, "{day:>2}"),
            'j' => write!(out, "{yday:03}"),
            'H' => write!(out, "{hour:02}"),
            'I' => write!(out, "{hour12:02}"),
            'M' => write!(out, "{minute:02}"),
            'S' => write!(out, "{second:02}"),
            'p' => write!(out, "{}", if hour < 12 { "AM" } else { "PM" }),
            'a' => write!(out, "{}", weekday_name.get(..3).unwrap_or("")),
            'A' => write!(out, "{weekday_name}"),
            'b' | 'h' => write!(out, "{}", month_name.get(..3).unwrap_or("")),
            'B' => write!(out, "{month_name}"),
            'F' => write!(out, "{year}-{month:02}-{day:02}"),
            'T' => write!(out, "{hour:02}:{minute:02}:{second:02}"),
            '%' => write!(out, "%"),
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("strftime_now: unsupported directive %{other}"),
                ));
            }
        };
    }
    Ok(out)
}

/// HF's `tojson` is Python's `json.dumps(x, ensure_ascii=False, indent=indent,
/// separators=separators, sort_keys=sort_keys)`: `", "`/`": "` separators, no HTML escaping,
/// key order kept. minijinja's own filter differs on all three, which changes prompts.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<String, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => match (v.as_i64(), v.as_str()) {
            (Some(n), _) => Some(" ".repeat(usize::try_from(n).unwrap_or(0).min(64))),
            (None, Some(s)) => Some(s.to_string()),
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an integer or a string",
                ));
            }
        },
    };
    let (item_sep, key_sep) = match separators.as_deref() {
        Some([a, b]) => (a.clone(), b.clone()),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be a pair of strings",
            ));
        }
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let opts = JsonOpts {
        indent,
        item_sep,
        key_sep,
        ensure_ascii: ensure_ascii.unwrap_or(false),
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    write_json(&mut out, value, &opts, 0)?;
    Ok(out)
}

struct JsonOpts {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    ensure_ascii: bool,
    sort_keys: bool,
}

fn write_json_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !c.is_ascii()) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_newline(out: &mut String, opts: &JsonOpts, depth: usize) {
    if let Some(ind) = &opts.indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(ind);
        }
    }
}

fn write_json(
    out: &mut String,
    value: &Value,
    opts: &JsonOpts,
    depth: usize,
) -> std::result::Result<(), Error> {
    if depth > 128 {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson: value nested too deeply",
        ));
    }
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Some(i) = value.as_i64() {
                let _ = write!(out, "{i}");
            } else if let Ok(f) = f64::try_from(value.clone()) {
                out.push_str(&python_float(f));
            } else {
                let _ = write!(out, "{value}");
            }
        }
        ValueKind::String => write_json_str(out, value.as_str().unwrap_or(""), opts.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                write_newline(out, opts, depth + 1);
                write_json(out, item, opts, depth + 1)?;
            }
            if !items.is_empty() {
                write_newline(out, opts, depth);
            }
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = value.try_iter()?.collect();
            if opts.sort_keys {
                keys.sort();
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                write_newline(out, opts, depth + 1);
                let key_text = match key.as_str() {
                    Some(s) => s.to_string(),
                    None => key.to_string(),
                };
                write_json_str(out, &key_text, opts.ensure_ascii);
                out.push_str(&opts.key_sep);
                write_json(out, &value.get_item(key)?, opts, depth + 1)?;
            }
            if !keys.is_empty() {
                write_newline(out, opts, depth);
            }
            out.push('}');
        }
        _ => write_json_str(out, &value.to_string(), opts.ensure_ascii),
    }
    Ok(())
}

/// Python's float repr for JSON: `1.0`, `0.5`, `1e+20`, `NaN`, `Infinity`.
fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if f.fract() == 0.0 && f.abs() < 1e16 {
        return format!("{f:.1}");
    }
    let s = format!("{f:?}");
    match s.split_once('e') {
        Some((m, e)) if !e.starts_with('-') => format!("{m}e+{e}"),
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs() -> Vec<ChatMessage> {
        vec![
            ChatMessage::system("You are a helpful assistant."),
            ChatMessage::user("Hi!"),
            ChatMessage::assistant("Hello."),
            ChatMessage::user("  What is 2+2?  "),
        ]
    }

    #[test]
    fn builtin_bitnet_template_matches_hf_shape() {
        let t = ChatTemplate::builtin_bitnet_2b4t();
        let one = t
            .render(
                &[ChatMessage::user("Hey, are you conscious?")],
                true,
                "<|begin_of_text|>",
                "<|end_of_text|>",
            )
            .unwrap_or_default();
        assert_eq!(one, "User: Hey, are you conscious?<|eot_id|>Assistant: ");
        let all = t
            .render(&msgs(), true, "<|begin_of_text|>", "<|end_of_text|>")
            .unwrap_or_default();
        assert_eq!(
            all,
            "System: You are a helpful assistant.<|eot_id|>User: Hi!<|eot_id|>\
             Assistant: Hello.<|eot_id|>User: What is 2+2?<|eot_id|>Assistant: "
        );
        let no_prompt = t.render(&msgs()[..2], false, "", "").unwrap_or_default();
        assert_eq!(
            no_prompt,
            "System: You are a helpful assistant.<|eot_id|>User: Hi!<|eot_id|>"
        );
    }

    /// A Llama-3-instruct style template: system handling via a slice, a loop with
    /// `loop.index0`, strip(), `raise_exception`, `bos_token`, trim_blocks/lstrip_blocks.
    const HF_STYLE: &str = "{{ bos_token }}
{% if messages[0]['role'] == 'system' %}
    {% set system = messages[0]['content'] %}
    {% set rest = messages[1:] %}
{% else %}
    {% set system = 'default system' %}
    {% set rest = messages %}
{% endif %}
{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + system.strip() + '<|eot_id|>' }}
{% for message in rest %}
    {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {% endif %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}
{% endfor %}
{% if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{% endif %}";

    #[test]
    fn hf_style_template_with_system_loop_and_raise() {
        let t = ChatTemplate::new(HF_STYLE).map_err(|e| e.to_string());
        let t = match t {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        };
        let out = t.render(&msgs(), true, "<|begin_of_text|>", "<|end_of_text|>");
        assert_eq!(
            out.map_err(|e| e.to_string()).as_deref(),
            // Python jinja2 (HF's environment: trim_blocks, lstrip_blocks) renders exactly this.
            Ok(
                "<|begin_of_text|>\n<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>\n\
                <|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>\n\
                <|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>\n\
                <|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>\n\
                <|start_header_id|>assistant<|end_header_id|>\n\n\n"
            )
        );
        let bad = [ChatMessage::user("a"), ChatMessage::user("b")];
        let err = t
            .render(&bad, true, "", "")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("Conversation roles must alternate"), "{err}");
        assert!(err.starts_with("chat template: render failed"), "{err}");
    }

    #[test]
    fn syntax_errors_are_reported_at_compile_time() {
        let err = ChatTemplate::new("{% for m in messages %}{{ m.content }}")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("invalid template"), "{err}");
    }

    #[test]
    fn python_compat_helpers() {
        let src = "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}\
                   {{ ns.n }}|{{ messages[1]['content'].upper() }}|{{ messages[0].content.startswith('You') }}|\
                   {{ messages[1] | tojson }}|{{ {'a': [1, 2.5, none, true], 'é': '<x>'} | tojson }}|\
                   {{ [1, 2] | tojson(indent=2) }}";
        let t = ChatTemplate::new(src).map_err(|e| e.to_string());
        let out = t.and_then(|t| t.render(&msgs(), false, "", "").map_err(|e| e.to_string()));
        assert_eq!(
            out.as_deref(),
            Ok(
                "4|HI!|True|{\"role\": \"user\", \"content\": \"Hi!\"}|{\"a\": [1, 2.5, null, true], \"é\": \"<x>\"}|[\n  1,\n  2\n]"
            )
        );
    }

    #[test]
    fn strftime_formats() {
        // 2024-07-26 13:25:09 UTC was a Friday.
        let t = 1_722_000_309;
        assert_eq!(strftime("%d %b %Y", t).ok().as_deref(), Some("26 Jul 2024"));
        assert_eq!(
            strftime("%F %T %A %j %I%p %%", t).ok().as_deref(),
            Some("2024-07-26 13:25:09 Friday 208 01PM %")
        );
        assert!(strftime("%Q", t).is_err());
        let now = ChatTemplate::new("{{ strftime_now('%Y') }}")
            .and_then(|t| t.render(&[], false, "", ""))
            .unwrap_or_default();
        assert_eq!(now.len(), 4);
    }
}
