//! Logs and the final error line, the way runc writes them.
//!
//! With `--log FILE` every log line and the final error go to FILE (appended, so the
//! sandbox process and later commands share it); with `--log-format json` each line is
//! `{"level":"error","msg":"...","time":"..."}`, which the runc v2 shim and conmon read
//! back to explain a failure. Without `--log`, logs go to stderr. The final error of a
//! command is always one line on stderr as well.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{bail, Result};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::timefmt::rfc3339_nanos;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// runc's JSON lines.
    Json,
}

impl LogFormat {
    /// Parses the flag's value; absent means text.
    pub fn parse(value: Option<&str>) -> Result<Self> {
        match value {
            None | Some("text") => Ok(LogFormat::Text),
            Some("json") => Ok(LogFormat::Json),
            Some(other) => bail!("unknown log format {other:?} (use text or json)"),
        }
    }

    /// The flag's value.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Where and how to log.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// `--log`.
    pub file: Option<PathBuf>,
    /// `--log-format`.
    pub format: LogFormat,
    /// `--debug`.
    pub debug: bool,
}

/// Installs the global tracing subscriber. `stderr_ok` says whether logs may go to
/// stderr when there is no log file (the sandbox's stderr is the container's, so it
/// sends only errors there).
pub fn init(config: &LogConfig, stderr_ok: bool) {
    let filter = if config.debug {
        EnvFilter::new("debug")
    } else {
        EnvFilter::try_from_env("HUSK_LOG").unwrap_or_else(|_| {
            EnvFilter::new(if stderr_ok || config.file.is_some() {
                "warn"
            } else {
                "error"
            })
        })
    };
    let file = config.file.as_deref().and_then(|p| open_log(p).ok());
    let registry = tracing_subscriber::registry().with(filter);
    // A second init (tests) is harmless: the first subscriber stays.
    let _ = match (file, config.format) {
        (Some(f), LogFormat::Json) => registry.with(RuncJsonLayer::new(f)).try_init(),
        (Some(f), LogFormat::Text) => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(Arc::new(f)),
            )
            .try_init(),
        (None, _) => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
}

fn open_log(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Reports a command's failure: one line on stderr and, with `--log`, one line in the log
/// file (a runc-style JSON error line with `--log-format json`).
pub fn report_error(config: &LogConfig, message: &str) {
    let message = one_line(message);
    eprintln!("husk: {message}");
    if let Some(path) = &config.file {
        let line = match config.format {
            LogFormat::Json => json_line("error", &message, &BTreeMap::new()),
            LogFormat::Text => format!(
                "{} ERROR husk: {message}\n",
                rfc3339_nanos(SystemTime::now())
            ),
        };
        if let Ok(mut f) = open_log(path) {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

/// Folds a multi-line message (e.g. a tool's stderr) into one line, with every other
/// control character escaped: messages carry text from the guest (an agent's error),
/// which must not be able to drive the operator's terminal.
pub fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(escape_controls)
        .collect::<Vec<_>>()
        .join("; ")
}

/// `s` with control characters written as escapes (`\x1b`, `\u{9b}`).
pub fn escape_controls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `{"level":..,"msg":..,"time":..}` plus `extra` fields, newline-terminated.
pub fn json_line(level: &str, msg: &str, extra: &BTreeMap<String, String>) -> String {
    let mut obj = serde_json::Map::new();
    obj.insert("level".into(), level.into());
    obj.insert("msg".into(), msg.into());
    obj.insert("time".into(), rfc3339_nanos(SystemTime::now()).into());
    for (k, v) in extra {
        obj.entry(k.clone()).or_insert_with(|| v.clone().into());
    }
    let mut line = serde_json::Value::Object(obj).to_string();
    line.push('\n');
    line
}

/// Writes events as runc's JSON lines; fields of enclosing spans (such as the container
/// id) become fields of the line.
struct RuncJsonLayer {
    file: File,
}

impl RuncJsonLayer {
    fn new(file: File) -> Self {
        Self { file }
    }
}

/// Fields recorded on a span, kept in its extensions.
struct SpanFields(BTreeMap<String, String>);

#[derive(Default)]
struct FieldCollector {
    message: String,
    fields: BTreeMap<String, String>,
}

impl Visit for FieldCollector {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.fields
                .insert(field.name().to_owned(), value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut s = String::new();
        let _ = write!(s, "{value:?}");
        if field.name() == "message" {
            self.message = s;
        } else {
            self.fields.insert(field.name().to_owned(), s);
        }
    }
}

impl<S> Layer<S> for RuncJsonLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: LayerContext<'_, S>) {
        let mut c = FieldCollector::default();
        attrs.record(&mut c);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(c.fields));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: LayerContext<'_, S>) {
        let mut c = FieldCollector::default();
        values.record(&mut c);
        if let Some(span) = ctx.span(id) {
            if let Some(f) = span.extensions_mut().get_mut::<SpanFields>() {
                f.0.extend(c.fields);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: LayerContext<'_, S>) {
        let mut c = FieldCollector::default();
        event.record(&mut c);
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(f) = span.extensions().get::<SpanFields>() {
                    for (k, v) in &f.0 {
                        c.fields.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                }
            }
        }
        let level = match *event.metadata().level() {
            Level::ERROR => "error",
            Level::WARN => "warning",
            Level::INFO => "info",
            Level::DEBUG => "debug",
            Level::TRACE => "trace",
        };
        let line = json_line(level, &c.message, &c.fields);
        let _ = (&self.file).write_all(line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_have_runc_keys() {
        let line = json_line("error", "container \"x\" does not exist", &BTreeMap::new());
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "container \"x\" does not exist");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
    }

    #[test]
    fn multi_line_messages_become_one_line() {
        assert_eq!(one_line("a\n\n  b  \nc"), "a; b; c");
    }

    #[test]
    fn guest_text_cannot_drive_the_terminal() {
        let hostile = "exec failed\x1b]0;pwned\x07\x1b[2J\rclean\u{9b}31m\x00";
        let line = one_line(hostile);
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(line.starts_with("exec failed"), "{line}");
        assert!(line.contains("\\u{1b}]0;pwned"), "{line}");
    }

    #[test]
    fn log_format_accepts_text_and_json_only() {
        assert_eq!(LogFormat::parse(None).unwrap(), LogFormat::Text);
        assert_eq!(LogFormat::parse(Some("json")).unwrap(), LogFormat::Json);
        assert!(LogFormat::parse(Some("xml")).is_err());
    }
}
