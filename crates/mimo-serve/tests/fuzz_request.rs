//! Property tests of the OpenAI request parser ([`mimo_serve::api`]) on hostile bodies, each case checked
//! on a thread with a 256 KiB stack. A body goes through the same steps as in the server: [`parse_object`],
//! [`CommonFields`] and [`ChatFields`]/[`CompletionFields`], [`CommonFields::check_supported`],
//! [`normalize_messages`] (chat) and [`parse_logit_bias`].
//!
//! Inputs: arbitrary bytes (and valid bodies cut or with a byte inserted), arbitrary JSON values (random
//! objects with the request's field names), and valid chat/completion bodies with one field replaced by a
//! hostile value (wrong types, huge and negative numbers, NaN-like strings, long and unicode strings, raw
//! number literals out of range). Plus one plain test of bodies nested 10,000 deep.
//!
//! Properties: no panic; every rejection is a 400 `invalid_request_error` with a non-empty message, and
//! its JSON body says the same; a rejection names the field (`param`) exactly where the parser does so
//! (`messages…`, `tools`, `tool_choice`, `functions`, `function_call`, `response_format`, `logit_bias`);
//! and a body is accepted exactly when a model of the request schema (below, [`expect`]) says it is valid,
//! so nothing malformed gets through and nothing valid is refused.
//!
//! Cases: env `MIMO_FUZZ_CASES` per property (default 6000: about 4 s for the three properties in the test
//! build on 2 cores).

use mimo_serve::api::{
    normalize_messages, parse, parse_logit_bias, parse_object, ApiError, ChatFields, CommonFields,
    CompletionFields,
};
use mimo_serve::tools::parse_tools;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Map, Value};
use std::cell::Cell;
use std::time::Instant;

const SMALL_STACK: usize = 256 << 10;
/// Vocabulary size `logit_bias` ids are checked against.
const VOCAB: usize = 1000;

thread_local! {
    /// Per-property tallies (each property runs on its own thread, its cases' counts are added to it): bodies accepted, refused by the JSON
    /// reader, by serde's type checks, and naming a field.
    static TALLY: [Cell<usize>; 4] = const { [Cell::new(0), Cell::new(0), Cell::new(0), Cell::new(0)] };
}

fn tally(i: usize) {
    TALLY.with(|t| t[i].set(t[i].get() + 1));
}

fn cases(name: &str) -> u32 {
    let n = std::env::var("MIMO_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6000);
    eprintln!("fuzz_request::{name}: {n} cases (MIMO_FUZZ_CASES)");
    n
}

/// Runs `f` on a small-stack thread (an overflow aborts the binary, failing the test).
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match std::thread::Builder::new()
        .stack_size(SMALL_STACK)
        .spawn(f)
        .map(|h| h.join())
    {
        Ok(Ok(v)) => v,
        Ok(Err(_)) => panic!("the check panicked"),
        Err(e) => panic!("spawn: {e}"),
    }
}

/// Runs a property: proptest generates on an ordinary thread (its generators need more than 256 KiB), and
/// each case is checked on a fresh small-stack thread (a panic there fails the case with its message).
fn run_small_stack<S: Strategy + 'static>(
    name: &'static str,
    strategy: fn() -> S,
    test: fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: Send + 'static,
{
    let n = cases(name);
    let started = Instant::now();
    let config = Config {
        cases: n,
        failure_persistence: None,
        ..Config::default()
    };
    let r = TestRunner::new(config).run(&strategy(), |v| {
        let h = std::thread::Builder::new()
            .stack_size(SMALL_STACK)
            .spawn(move || (test(v), TALLY.with(|t| t.each_ref().map(Cell::get))))
            .map_err(|e| TestCaseError::fail(format!("spawn: {e}")))?;
        match h.join() {
            Ok((r, counts)) => {
                TALLY.with(|t| {
                    for (c, k) in t.iter().zip(counts) {
                        c.set(c.get() + k);
                    }
                });
                r
            }
            Err(p) => Err(TestCaseError::fail(format!(
                "panicked: {}",
                p.downcast_ref::<String>()
                    .map(String::as_str)
                    .or(p.downcast_ref::<&str>().copied())
                    .unwrap_or("?")
            ))),
        }
    });
    let [ok, json, typed, param] = TALLY.with(|t| t.each_ref().map(Cell::get));
    eprintln!(
        "fuzz_request::{name}: {n} cases in {:.1?} (bodies: {ok} accepted, refused: {json} as JSON, \
         {typed} by type, {param} naming the field)",
        started.elapsed()
    );
    if let Err(e) = r {
        panic!("{e}");
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Chat,
    Completion,
}

/// The server's request steps, up to sampling.
fn prepare(bytes: &[u8], kind: Kind) -> Result<(), ApiError> {
    let v = parse_object(bytes)?;
    let c: CommonFields = parse(&v)?;
    match kind {
        Kind::Chat => {
            let f: ChatFields = parse(&v)?;
            c.check_supported()?;
            parse_tools(c.tools.as_ref(), c.tool_choice.as_ref())?;
            c.output_grammar()?;
            normalize_messages(&f.messages)?;
        }
        Kind::Completion => {
            let _: CompletionFields = parse(&v)?;
            c.check_supported()?;
            c.output_grammar()?;
        }
    }
    parse_logit_bias(c.logit_bias.as_ref(), VOCAB)?;
    Ok(())
}

/// Checks the shape of a rejection.
fn check_error(e: &ApiError, input: &dyn Fn() -> String) -> Result<(), TestCaseError> {
    prop_assert_eq!(e.status.as_u16(), 400, "{:?} for {}", e, input());
    prop_assert_eq!(e.kind, "invalid_request_error");
    prop_assert!(
        !e.message.trim().is_empty(),
        "empty message for {}",
        input()
    );
    prop_assert!(e.code.is_none());
    let body = e.body();
    prop_assert_eq!(&body["error"]["message"], &json!(e.message));
    prop_assert_eq!(&body["error"]["type"], &json!("invalid_request_error"));
    prop_assert_eq!(&body["error"]["param"], &json!(e.param));
    if let Some(p) = &e.param {
        prop_assert!(!p.is_empty());
    }
    Ok(())
}

fn show(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    if s.len() > 400 {
        let mut k = 400;
        while !s.is_char_boundary(k) {
            k -= 1;
        }
        format!("{}… ({} bytes)", &s[..k], b.len())
    } else {
        s.into_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// A model of the request schema
// ---------------------------------------------------------------------------------------------

/// JSON types of the request fields, as serde reads them from a `serde_json::Value`.
#[derive(Clone, Copy, Debug)]
enum Ty {
    Str,
    Bool,
    I64,
    F32,
    U32List,
    /// `stop`: a string or a list of strings.
    Stop,
    /// A list of strings.
    StrList,
    /// `stream_options`: a struct with one optional bool.
    StreamOptions,
    /// An object (`chat_template_kwargs`).
    Object,
    /// Any JSON value, checked later (`logit_bias`, `tools`, ...).
    Any,
    /// `messages`: a list (required).
    List,
    /// `prompt` (required): text, texts, token ids, lists of token ids.
    Prompt,
}

const COMMON: &[(&str, Ty)] = &[
    ("model", Ty::Str),
    ("n", Ty::I64),
    ("stream", Ty::Bool),
    ("stream_options", Ty::StreamOptions),
    ("stop", Ty::Stop),
    ("stop_token_ids", Ty::U32List),
    ("max_tokens", Ty::I64),
    ("max_completion_tokens", Ty::I64),
    ("temperature", Ty::F32),
    ("top_p", Ty::F32),
    ("top_k", Ty::I64),
    ("min_p", Ty::F32),
    ("repetition_penalty", Ty::F32),
    ("presence_penalty", Ty::F32),
    ("frequency_penalty", Ty::F32),
    ("seed", Ty::I64),
    ("max_thinking_tokens", Ty::I64),
    ("logit_bias", Ty::Any),
    ("tools", Ty::Any),
    ("tool_choice", Ty::Any),
    ("functions", Ty::Any),
    ("function_call", Ty::Any),
    ("response_format", Ty::Any),
    ("structured_outputs", Ty::Any),
    ("guided_json", Ty::Any),
    ("guided_regex", Ty::Str),
    ("guided_choice", Ty::StrList),
    ("guided_grammar", Ty::Str),
];

const CHAT: &[(&str, Ty)] = &[
    ("messages", Ty::List),
    ("logprobs", Ty::Bool),
    ("top_logprobs", Ty::I64),
    ("chat_template_kwargs", Ty::Object),
    ("add_generation_prompt", Ty::Bool),
];

const COMPLETION: &[(&str, Ty)] = &[("prompt", Ty::Prompt), ("logprobs", Ty::I64)];

fn is_u32(v: &Value) -> bool {
    v.as_u64().is_some_and(|x| x <= u32::MAX as u64)
}

fn all(v: &Value, f: fn(&Value) -> bool) -> bool {
    v.as_array().is_some_and(|a| a.iter().all(f))
}

/// Whether serde accepts `v` (present, possibly null) for a field of type `ty`.
fn type_ok(ty: Ty, v: &Value) -> bool {
    let required = matches!(ty, Ty::List | Ty::Prompt);
    if v.is_null() {
        return !required;
    }
    match ty {
        Ty::Str => v.is_string(),
        Ty::Bool => v.is_boolean(),
        // floats are refused even when integral; u64 above i64::MAX is out of range
        Ty::I64 => v.as_i64().is_some(),
        // any number (a huge one becomes ±inf as an f32; range checks come later, in sampling)
        Ty::F32 => v.is_number(),
        Ty::U32List => all(v, is_u32),
        Ty::Stop => v.is_string() || all(v, Value::is_string),
        Ty::StrList => all(v, Value::is_string),
        // serde also reads a struct from a list of its fields in order: [] or [include_usage]
        Ty::StreamOptions => match v {
            Value::Object(m) => m
                .get("include_usage")
                .is_none_or(|x| x.is_null() || x.is_boolean()),
            Value::Array(a) => a.len() <= 1 && a.iter().all(|x| x.is_null() || x.is_boolean()),
            _ => false,
        },
        Ty::Object => v.is_object(),
        Ty::Any => true,
        Ty::List => v.is_array(),
        Ty::Prompt => {
            v.is_string()
                || all(v, Value::is_string)
                || all(v, is_u32)
                || all(v, |x| all(x, is_u32))
        }
    }
}

/// What [`prepare`] must do with `body`: `Ok` or the rejection's `param` (None: a type error from serde,
/// which names no field).
fn expect(body: &Map<String, Value>, kind: Kind) -> Result<(), Option<String>> {
    let own = match kind {
        Kind::Chat => CHAT,
        Kind::Completion => COMPLETION,
    };
    for &(name, ty) in COMMON.iter().chain(own) {
        match body.get(name) {
            None if matches!(ty, Ty::List | Ty::Prompt) => return Err(None),
            None => {}
            Some(v) if !type_ok(ty, v) => return Err(None),
            Some(_) => {}
        }
    }
    let get = |k: &str| body.get(k).filter(|v| !v.is_null());
    let bad = |p: &str| Err(Some(p.to_string()));
    // in the order `check_supported` checks them
    if get("functions").is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty())) {
        return bad("functions");
    }
    if get("function_call").is_some_and(|v| v.as_str() != Some("none")) {
        return bad("function_call");
    }
    // `tools`/`tool_choice` and the output-constraint fields have their own unit tests (crate::tools,
    // crate::api); here their verdicts must compose in the server's order.
    if kind == Kind::Chat {
        if let Err(e) = parse_tools(get("tools"), get("tool_choice")) {
            return Err(e.param);
        }
    }
    let c: CommonFields = parse(&Value::Object(body.clone())).map_err(|_| None)?;
    if let Err(e) = c.output_grammar() {
        return Err(e.param);
    }
    if kind == Kind::Chat {
        let msgs = body
            .get("messages")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        if msgs.is_empty() {
            return bad("messages");
        }
        for (i, m) in msgs.iter().enumerate() {
            let Some(m) = m.as_object() else {
                return bad(&format!("messages[{i}]"));
            };
            if m.get("role")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return bad(&format!("messages[{i}].role"));
            }
            match m.get("content") {
                None | Some(Value::Null) | Some(Value::String(_)) => {}
                Some(Value::Array(parts)) => {
                    for (j, p) in parts.iter().enumerate() {
                        if p.get("type") != Some(&json!("text"))
                            || !p.get("text").is_some_and(Value::is_string)
                        {
                            return bad(&format!("messages[{i}].content[{j}]"));
                        }
                    }
                }
                Some(_) => return bad(&format!("messages[{i}].content")),
            }
        }
    }
    if let Some(v) = get("logit_bias") {
        let Some(m) = v.as_object() else {
            return bad("logit_bias");
        };
        for (k, b) in m {
            let id_ok = k.parse::<u32>().is_ok_and(|id| (id as usize) < VOCAB);
            let bias_ok = b.as_f64().is_some_and(|x| (-100.0..=100.0).contains(&x));
            if !id_ok || !bias_ok {
                return bad("logit_bias");
            }
        }
    }
    Ok(())
}

/// Runs `bytes` through [`prepare`] and checks the outcome against `expected` (when the body is JSON).
fn check_body(
    bytes: &[u8],
    kind: Kind,
    expected: Option<Result<(), Option<String>>>,
) -> Result<(), TestCaseError> {
    let got = prepare(bytes, kind);
    let input = || format!("{kind:?} body {}", show(bytes));
    match &got {
        Ok(()) => tally(0),
        Err(e) => {
            check_error(e, &input)?;
            tally(match () {
                _ if e.param.is_some() => 3,
                _ if e.message.starts_with("invalid request body: ") => 2,
                _ => 1,
            });
        }
    }
    if let Some(exp) = expected {
        match (&got, &exp) {
            (Ok(()), Ok(())) => {}
            (Err(e), Err(param)) => prop_assert_eq!(&e.param, param, "{}: {}", input(), e.message),
            _ => {
                return Err(TestCaseError::fail(format!(
                    "expected {exp:?}, got {:?} for {}",
                    got.map_err(|e| (e.param, e.message)),
                    input()
                )))
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9 ]{0,12}",
        1 => "\\PC{0,16}",
        1 => prop::sample::select(&["", "none", "auto", "text", "json_object", "NaN", "-NaN", "inf",
            "-Infinity", "1e400", "-1", "0", "5", "1.5", "user", "system", "assistant", "\u{0}",
            "\u{feff}", "漢字", "🙂", "\u{202e}", "\\u0000"][..]).prop_map(str::to_string),
        1 => (0usize..100_000).prop_map(|n| "x".repeat(n)),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(|x| json!(x)),
        any::<u64>().prop_map(|x| json!(x)),
        (-3i64..1100).prop_map(|x| json!(x)),
        any::<f64>().prop_map(|x| json!(x)), // NaN and infinities become null
        prop::sample::select(
            &[
                0.0,
                -0.0,
                0.5,
                1.0,
                1.5,
                2.0,
                -1.0,
                100.0,
                100.5,
                -100.0,
                1e300,
                -1e300,
                5e-324,
                3.5e38,
                4e38,
                1e19,
                4294967296.0,
                9.3e18
            ][..]
        )
        .prop_map(|x| json!(x)),
        Just(json!(u32::MAX)),
        Just(json!(u32::MAX as u64 + 1)),
        Just(json!(i64::MAX)),
        Just(json!(i64::MIN)),
        Just(json!(i64::MAX as u64 + 1)),
    ]
}

/// Values valid or nearly valid for one of the request's fields.
fn near_valid() -> impl Strategy<Value = Value> {
    let msg = (
        prop::option::of(text().prop_map(Value::String)),
        prop::option::of(prop_oneof![
            text().prop_map(Value::String),
            Just(Value::Null),
            prop::collection::vec(
                prop_oneof![
                    4 => text().prop_map(|t| json!({"type": "text", "text": t})),
                    1 => Just(json!({"type": "image_url", "image_url": {"url": "x"}})),
                    1 => Just(json!({"type": "text"})),
                    1 => Just(json!({"type": "text", "text": 5})),
                    1 => Just(json!("text")),
                ],
                0..3
            )
            .prop_map(Value::Array),
            number(),
        ]),
    )
        .prop_map(|(role, content)| {
            let mut m = Map::new();
            if let Some(r) = role {
                m.insert("role".into(), r);
            }
            if let Some(c) = content {
                m.insert("content".into(), c);
            }
            Value::Object(m)
        });
    prop_oneof![
        prop::collection::vec(msg, 0..4).prop_map(Value::Array),
        prop::collection::vec(number(), 0..4).prop_map(Value::Array),
        prop::collection::vec(text().prop_map(Value::String), 0..4).prop_map(Value::Array),
        prop::collection::vec(prop::collection::vec(number(), 0..3).prop_map(Value::Array), 0..3)
            .prop_map(Value::Array),
        prop::collection::btree_map(
            prop_oneof!["[0-9]{1,4}", Just("-1".to_string()), Just("+5".to_string()), "[a-z]{1,3}"],
            prop_oneof![3 => (-101.0f64..101.0).prop_map(|x| json!(x)), 1 => number(), 1 => Just(json!("5"))],
            0..4,
        )
        .prop_map(|m| Value::Object(m.into_iter().collect())),
        prop::sample::select(&["none", "auto", "text", "json_object"][..])
            .prop_map(|t| json!({"type": t})),
        Just(json!({"include_usage": true})),
        Just(json!({"include_usage": "yes"})),
        Just(json!([true])),
        Just(json!([true, false])),
        Just(json!([])),
        Just(json!({})),
        Just(json!([{"type": "function", "function": {"name": "f"}}])),
    ]
}

/// Any JSON value, small or nested, with field-like leaves.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text().prop_map(Value::String),
        near_valid(),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn field_names() -> Vec<&'static str> {
    COMMON
        .iter()
        .chain(CHAT)
        .chain(COMPLETION)
        .map(|f| f.0)
        .chain(["role", "content", "type", "text", "include_usage", "user"])
        .collect()
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(field_names()).prop_map(str::to_string),
        1 => "[a-z_]{1,8}",
        1 => "\\PC{0,4}",
    ]
}

/// A valid value for a field of type `ty`.
fn valid(name: &str, ty: Ty) -> BoxedStrategy<Value> {
    match (name, ty) {
        ("tools" | "functions", _) => prop_oneof![Just(Value::Null), Just(json!([]))].boxed(),
        ("tool_choice" | "function_call", _) => {
            prop_oneof![Just(Value::Null), Just(json!("none"))].boxed()
        }
        ("response_format", _) => Just(json!({"type": "text"})).boxed(),
        // At most one constraint field may be set: the valid body sets none.
        (
            "structured_outputs" | "guided_json" | "guided_regex" | "guided_choice"
            | "guided_grammar",
            _,
        ) => Just(Value::Null).boxed(),
        ("logit_bias", _) => {
            prop::collection::btree_map(0u32..VOCAB as u32, -100.0f64..=100.0, 0..3)
                .prop_map(|m| {
                    Value::Object(
                        m.into_iter()
                            .map(|(k, v)| (k.to_string(), json!(v)))
                            .collect(),
                    )
                })
                .boxed()
        }
        ("messages", _) => prop::collection::vec(
            (
                prop::sample::select(&["system", "user", "assistant"][..]),
                prop_oneof![
                    text().prop_map(Value::String),
                    Just(Value::Null),
                    text().prop_map(|t| json!([{"type": "text", "text": t}])),
                ],
            )
                .prop_map(|(r, c)| json!({"role": r, "content": c})),
            1..4,
        )
        .prop_map(Value::Array)
        .boxed(),
        (_, Ty::Str) => text().prop_map(Value::String).boxed(),
        (_, Ty::Bool) => any::<bool>().prop_map(Value::Bool).boxed(),
        (_, Ty::I64) => (-2i64..5000).prop_map(|x| json!(x)).boxed(),
        (_, Ty::F32) => (0.0f64..2.0).prop_map(|x| json!(x)).boxed(),
        (_, Ty::U32List) => prop::collection::vec(0u32..VOCAB as u32, 0..3)
            .prop_map(|v| json!(v))
            .boxed(),
        (_, Ty::Stop) => prop_oneof![
            text().prop_map(Value::String),
            prop::collection::vec(text(), 0..3).prop_map(|v| json!(v)),
        ]
        .boxed(),
        (_, Ty::StreamOptions) => any::<bool>()
            .prop_map(|b| json!({"include_usage": b}))
            .boxed(),
        (_, Ty::Object) => Just(json!({"enable_thinking": true})).boxed(),
        (_, Ty::Prompt) => prop_oneof![
            text().prop_map(Value::String),
            prop::collection::vec(0u32..VOCAB as u32, 1..4).prop_map(|v| json!(v)),
            prop::collection::vec(text(), 1..3).prop_map(|v| json!(v)),
        ]
        .boxed(),
        (_, Ty::Any | Ty::List | Ty::StrList) => Just(Value::Null).boxed(),
    }
}

/// A valid body of `kind`: the required field and a random subset of the optional ones.
fn valid_body(kind: Kind) -> impl Strategy<Value = Map<String, Value>> {
    let own = match kind {
        Kind::Chat => CHAT,
        Kind::Completion => COMPLETION,
    };
    let fields: Vec<BoxedStrategy<Option<(String, Value)>>> = COMMON
        .iter()
        .chain(own)
        .map(|&(name, ty)| {
            let required = matches!(ty, Ty::List | Ty::Prompt);
            let v = valid(name, ty).prop_map(move |v| Some((name.to_string(), v)));
            if required {
                v.boxed()
            } else {
                prop_oneof![2 => Just(None), 1 => v].boxed()
            }
        })
        .collect();
    fields.prop_map(|fs| fs.into_iter().flatten().collect())
}

/// How one field of a valid body is damaged.
#[derive(Debug, Clone)]
enum Damage {
    /// Replaced by a JSON value.
    Set(&'static str, Value),
    Remove(&'static str),
    /// Replaced by a raw number literal (not representable, or only as a float).
    Raw(&'static str, String),
}

fn damage() -> impl Strategy<Value = Damage> {
    let field = prop::sample::select(field_names());
    prop_oneof![
        6 => (field.clone(), value()).prop_map(|(f, v)| Damage::Set(f, v)),
        1 => field.clone().prop_map(Damage::Remove),
        1 => (field, prop_oneof![
            "-?[0-9]{19,40}",
            "-?[0-9]{1,3}(\\.[0-9]{1,3})?[eE][+-]?[0-9]{2,4}",
            Just("-0".to_string()),
            Just("1.0".to_string()),
            Just("1E2".to_string()),
        ])
            .prop_map(|(f, n)| Damage::Raw(f, n)),
    ]
}

/// The bytes of `body` with `damage` applied, and the body as parsed back (None: not valid JSON).
fn apply(mut body: Map<String, Value>, damage: &Damage) -> (Vec<u8>, Option<Map<String, Value>>) {
    match damage {
        Damage::Set(f, v) => {
            body.insert(f.to_string(), v.clone());
        }
        Damage::Remove(f) => {
            body.remove(*f);
        }
        Damage::Raw(f, n) => {
            body.remove(*f);
            let mut s = Value::Object(body).to_string();
            let sep = if s.len() > 2 { "," } else { "" };
            s.insert_str(s.len() - 1, &format!("{sep}\"{f}\":{n}"));
            let back = serde_json::from_str::<Value>(&s)
                .ok()
                .and_then(|v| match v {
                    Value::Object(m) => Some(m),
                    _ => None,
                });
            return (s.into_bytes(), back);
        }
    }
    let bytes = Value::Object(body.clone()).to_string().into_bytes();
    (bytes, Some(body))
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![Just(Kind::Chat), Just(Kind::Completion)]
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

/// Arbitrary bytes, and valid bodies cut short or with a byte inserted: never a panic, rejections are 400s.
#[test]
fn arbitrary_bytes_are_answered() {
    run_small_stack(
        "arbitrary_bytes_are_answered",
        || {
            prop_oneof![
                2 => (prop::collection::vec(any::<u8>(), 0..200), kind()).prop_map(|(b, k)| (b, k)),
                2 => (kind().prop_flat_map(|k| (valid_body(k), Just(k))), 0.0f64..1.0, prop::option::of(any::<u8>()))
                    .prop_map(|((body, k), at, ins)| {
                        let mut b = Value::Object(body).to_string().into_bytes();
                        let at = ((b.len() as f64 * at) as usize).min(b.len().saturating_sub(1));
                        match ins {
                            Some(x) => b.insert(at, x),
                            None => b.truncate(at),
                        }
                        (b, k)
                    }),
                1 => (prop::sample::select(&["", " ", "null", "[]", "\"x\"", "1", "{", "}", "{}",
                    "\u{feff}{}", "{\"messages\": []}", "{\"prompt\": \"x\"} x", "{\"prompt\": \"\\ud800\"}",
                    "{\"prompt\": \"x\", \"prompt\": 5}", "{\"prompt\": NaN}", "{\"prompt\": \"x\",}"][..]), kind())
                    .prop_map(|(s, k)| (s.as_bytes().to_vec(), k)),
            ]
        },
        |(bytes, kind)| {
            // when the bytes are a JSON object, the model of the schema decides
            let expected = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.as_object().map(|m| expect(m, kind)));
            check_body(&bytes, kind, expected)
        },
    );
}

/// Arbitrary JSON values and objects made of the request's field names: accepted exactly when valid.
#[test]
fn arbitrary_json_is_accepted_exactly_when_valid() {
    run_small_stack(
        "arbitrary_json_is_accepted_exactly_when_valid",
        || {
            kind().prop_flat_map(|k| {
                let extra = || prop::collection::btree_map(key(), value(), 0..8);
                (
                    prop_oneof![
                        1 => value(),
                        2 => extra().prop_map(|m| Value::Object(m.into_iter().collect())),
                        // a valid body with random fields added or overwritten
                        2 => (valid_body(k), extra()).prop_map(|(mut b, m)| {
                            b.extend(m);
                            Value::Object(b)
                        }),
                    ],
                    Just(k),
                )
            })
        },
        |(v, kind)| {
            let bytes = v.to_string().into_bytes();
            let expected = match &v {
                Value::Object(m) => Some(expect(m, kind)),
                _ => None,
            };
            if expected.is_none() {
                let e = prepare(&bytes, kind).err();
                prop_assert!(e.is_some(), "non-object accepted: {}", show(&bytes));
            }
            check_body(&bytes, kind, expected)
        },
    );
}

/// Valid chat and completion bodies are accepted; with one field damaged, accepted exactly when the
/// damaged field is still valid, and otherwise refused naming the field where the parser names fields.
#[test]
fn damaged_bodies_are_refused_cleanly() {
    run_small_stack(
        "damaged_bodies_are_refused_cleanly",
        || {
            kind().prop_flat_map(|k| {
                (
                    valid_body(k),
                    prop::collection::vec(damage(), 0..3),
                    Just(k),
                )
            })
        },
        |(body, damages, kind)| {
            // undamaged: must be accepted
            let bytes = Value::Object(body.clone()).to_string().into_bytes();
            prop_assert!(
                expect(&body, kind).is_ok(),
                "generator made an invalid body: {}",
                show(&bytes)
            );
            check_body(&bytes, kind, Some(Ok(())))?;
            let mut body = body;
            for d in &damages {
                let (bytes, back) = apply(body.clone(), d);
                match back {
                    Some(b) => {
                        check_body(&bytes, kind, Some(expect(&b, kind)))?;
                        body = b;
                    }
                    None => {
                        // a number serde_json cannot represent: a JSON error
                        let e = prepare(&bytes, kind).err();
                        prop_assert!(e.is_some(), "accepted: {}", show(&bytes));
                        check_body(&bytes, kind, None)?;
                    }
                }
            }
            Ok(())
        },
    );
}

/// Bodies nested 10,000 deep (arrays, objects, inside `messages`, unclosed) on a 256 KiB stack: a clear
/// 400 from the JSON reader's recursion limit, no crash. Nesting within the limit reaches the field checks.
#[test]
fn deep_json_is_refused_cleanly() {
    let started = Instant::now();
    let n = on_small_stack(|| {
        let deep = 10_000;
        let arrays = |d: usize| format!("{}1{}", "[".repeat(d), "]".repeat(d));
        let objects = |d: usize| format!("{}1{}", "{\"a\":".repeat(d), "}".repeat(d));
        let mixed = |d: usize| format!("{}1{}", "[{\"a\":".repeat(d / 2), "}]".repeat(d / 2));
        let mut bodies = Vec::new();
        for inner in [arrays(deep), objects(deep), mixed(deep)] {
            bodies.push(inner.clone());
            bodies.push(format!("{{\"x\":{inner}}}"));
            bodies.push(format!("{{\"messages\":{inner}}}"));
            bodies.push(format!(
                "{{\"messages\":[{{\"role\":\"user\",\"content\":{inner}}}]}}"
            ));
            bodies.push(format!("{{\"prompt\":{inner}}}"));
            bodies.push(format!("{{\"stop\":{inner}, \"prompt\": \"x\"}}"));
            bodies.push(format!(
                "{{\"logit_bias\":{{\"1\":{inner}}}, \"prompt\": \"x\"}}"
            ));
            let cut = inner.len() / 2;
            bodies.push(format!("{{\"prompt\":{}", &inner[..cut])); // unclosed
        }
        bodies.push("[".repeat(deep));
        bodies.push("{\"a\":".repeat(deep));
        let mut n = 0;
        for body in &bodies {
            for kind in [Kind::Chat, Kind::Completion] {
                let e = match prepare(body.as_bytes(), kind) {
                    Ok(()) => panic!("deep body accepted: {}", show(body.as_bytes())),
                    Err(e) => e,
                };
                assert_eq!(e.status.as_u16(), 400, "{e:?}");
                assert!(
                    e.message
                        .starts_with("request body is not valid JSON: recursion limit exceeded"),
                    "{}: {}",
                    show(body.as_bytes()),
                    e.message
                );
                n += 1;
            }
        }
        // within the limit: parsed, then refused by the field checks (or accepted where the value fits)
        let ok = |d: usize| (arrays(d), objects(d));
        for d in [1usize, 10, 100] {
            let (a, o) = ok(d);
            let body =
                format!("{{\"messages\":[{{\"role\":\"user\",\"content\":{a}}}], \"x\": {o}}}");
            let e = prepare(body.as_bytes(), Kind::Chat).expect_err("array content of arrays");
            assert_eq!(
                e.param.as_deref(),
                Some("messages[0].content[0]"),
                "{}",
                e.message
            );
            let body = format!("{{\"messages\":[{{\"role\":\"user\",\"content\":\"x\"}}], \"vendor\": {o}, \"chat_template_kwargs\": {{\"k\": {a}}}}}");
            prepare(body.as_bytes(), Kind::Chat)
                .expect("deep unknown and free-form fields are fine");
            n += 2;
        }
        n
    });
    eprintln!(
        "fuzz_request::deep_json: {n} bodies in {:.1?}",
        started.elapsed()
    );
}
