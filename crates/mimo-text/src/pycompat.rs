//! Python compatibility for chat templates: Jinja2's printing of values, `json.dumps`-like `tojson`,
//! `raise_exception`.

use std::fmt::Write as _;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::ErrorKind;

use crate::template::{MAX_TEMPLATE_OUTPUT, OUTPUT_LEFT};
use crate::TemplateValue;

pub(crate) fn raise_exception(message: String) -> Result<TemplateValue, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// Prints values as Jinja2 (Python `str()`) does: `True`, `False`, `None`, `[1, 'a']`, `{'k': 'v'}`; fails
/// once the render has printed [`MAX_TEMPLATE_OUTPUT`] bytes.
pub(crate) fn python_formatter(
    out: &mut minijinja::Output,
    state: &mut minijinja::State,
    value: &TemplateValue,
) -> Result<(), minijinja::Error> {
    let s = match value.kind() {
        ValueKind::None | ValueKind::Bool | ValueKind::Seq | ValueKind::Map => {
            let mut s = String::new();
            python_str(&mut s, value, false);
            std::borrow::Cow::Owned(s)
        }
        _ => match value.as_str() {
            Some(s) => std::borrow::Cow::Borrowed(s),
            None => std::borrow::Cow::Owned(value.to_string()),
        },
    };
    let fits = OUTPUT_LEFT.with(|left| match left.get().checked_sub(s.len()) {
        Some(rest) => {
            left.set(rest);
            true
        }
        None => false,
    });
    if !fits {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("the rendered prompt exceeds {MAX_TEMPLATE_OUTPUT} bytes"),
        ));
    }
    match value.kind() {
        ValueKind::None | ValueKind::Bool | ValueKind::Seq | ValueKind::Map => out
            .write_str(&s)
            .map_err(|e| minijinja::Error::new(ErrorKind::WriteFailure, e.to_string())),
        _ => minijinja::escape_formatter(out, state, value),
    }
}

pub(crate) fn python_str(out: &mut String, v: &TemplateValue, nested: bool) {
    match v.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if v.is_true() { "True" } else { "False" }),
        ValueKind::String if nested => python_repr_str(out, v.as_str().unwrap_or_default()),
        ValueKind::Number => {
            if let Some(f) = as_float(v) {
                out.push_str(&python_float(f));
            } else {
                let _ = write!(out, "{v}");
            }
        }
        ValueKind::Seq => {
            out.push('[');
            if let Ok(iter) = v.try_iter() {
                for (i, item) in iter.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    python_str(out, &item, true);
                }
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            if let Ok(iter) = v.try_iter() {
                for (i, key) in iter.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    python_str(out, &key, true);
                    out.push_str(": ");
                    let item = v.get_item(&key).unwrap_or_default();
                    python_str(out, &item, true);
                }
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{v}");
        }
    }
}

pub(crate) fn python_repr_str(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// `Some(f)` when the value is a float (not an integer).
pub(crate) fn as_float(v: &TemplateValue) -> Option<f64> {
    if v.kind() != ValueKind::Number || v.is_integer() {
        return None;
    }
    f64::try_from(v.clone()).ok()
}

/// Python `repr(float)`: shortest round-trip digits, positional for exponents in [-4, 16), else `1e+16` style.
pub(crate) fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // `{:e}` gives the shortest round-trip mantissa, e.g. "1.2345e-5".
    let sci = format!("{f:e}");
    let (mantissa, exp) = match sci.split_once('e') {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (sci.as_str(), 0),
    };
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        let body = if point <= 0 {
            format!("0.{}{}", "0".repeat((-point) as usize), digits)
        } else if (point as usize) >= digits.len() {
            format!("{}{}.0", digits, "0".repeat(point as usize - digits.len()))
        } else {
            format!(
                "{}.{}",
                &digits[..point as usize],
                &digits[point as usize..]
            )
        };
        format!("{sign}{body}")
    } else {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{m}e{esign}{:02}", exp.abs())
    }
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
pub(crate) fn tojson(
    value: &TemplateValue,
    kwargs: Kwargs,
) -> Result<TemplateValue, minijinja::Error> {
    let ensure_ascii: bool = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    let sort_keys: bool = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let indent: Option<String> = match kwargs.get::<Option<TemplateValue>>("indent")? {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                let n = i64::try_from(v).map_err(|_| {
                    minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: indent must be an integer or a string",
                    )
                })?;
                Some(" ".repeat(n.max(0) as usize))
            }
        },
    };
    let separators: Option<(String, String)> =
        match kwargs.get::<Option<TemplateValue>>("separators")? {
            Some(v) if !v.is_none() => {
                let items: Vec<TemplateValue> = v.try_iter()?.collect();
                match items.as_slice() {
                    [a, b] => Some((a.to_string(), b.to_string())),
                    _ => {
                        return Err(minijinja::Error::new(
                            ErrorKind::InvalidOperation,
                            "tojson: separators must be a pair of strings",
                        ))
                    }
                }
            }
            _ => None,
        };
    kwargs.assert_all_used()?;
    let (item_sep, key_sep) = separators.unwrap_or_else(|| {
        if indent.is_some() {
            (",".into(), ": ".into())
        } else {
            (", ".into(), ": ".into())
        }
    });
    let opts = JsonOpts {
        ensure_ascii,
        sort_keys,
        indent,
        item_sep,
        key_sep,
    };
    let mut out = String::new();
    write_json(&mut out, value, &opts, 0);
    Ok(TemplateValue::from_safe_string(out))
}

pub(crate) struct JsonOpts {
    ensure_ascii: bool,
    sort_keys: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
}

pub(crate) fn write_json(out: &mut String, v: &TemplateValue, o: &JsonOpts, level: usize) {
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => match as_float(v) {
            Some(f) => out.push_str(&python_float(f)),
            None => {
                let _ = write!(out, "{v}");
            }
        },
        ValueKind::String => json_str(out, v.as_str().unwrap_or_default(), o.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<TemplateValue> = v.try_iter().map(|i| i.collect()).unwrap_or_default();
            write_container(out, '[', ']', &items, o, level, |out, item, level| {
                write_json(out, item, o, level)
            });
        }
        ValueKind::Map => {
            let mut keys: Vec<TemplateValue> =
                v.try_iter().map(|i| i.collect()).unwrap_or_default();
            if o.sort_keys {
                keys.sort_by_key(json_key);
            }
            write_container(out, '{', '}', &keys, o, level, |out, key, level| {
                json_str(out, &json_key(key), o.ensure_ascii);
                out.push_str(&o.key_sep);
                write_json(out, &v.get_item(key).unwrap_or_default(), o, level);
            });
        }
        _ => json_str(out, &v.to_string(), o.ensure_ascii),
    }
}

pub(crate) fn json_key(k: &TemplateValue) -> String {
    match k.kind() {
        ValueKind::String => k.as_str().unwrap_or_default().to_string(),
        ValueKind::None => "null".into(),
        ValueKind::Bool => (if k.is_true() { "true" } else { "false" }).into(),
        _ => k.to_string(),
    }
}

pub(crate) fn write_container(
    out: &mut String,
    open: char,
    close: char,
    items: &[TemplateValue],
    o: &JsonOpts,
    level: usize,
    mut each: impl FnMut(&mut String, &TemplateValue, usize),
) {
    out.push(open);
    if items.is_empty() {
        out.push(close);
        return;
    }
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(&o.item_sep);
        }
        if let Some(ind) = &o.indent {
            out.push('\n');
            out.push_str(&ind.repeat(level + 1));
        }
        each(out, item, level + 1);
    }
    if let Some(ind) = &o.indent {
        out.push('\n');
        out.push_str(&ind.repeat(level));
    }
    out.push(close);
}

/// A JSON string literal as Python's `json.dumps` writes it.
pub(crate) fn json_str(out: &mut String, s: &str, ensure_ascii: bool) {
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
            c if (c as u32) < 0x20 || (ensure_ascii && (c as u32) > 0x7e) => {
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
