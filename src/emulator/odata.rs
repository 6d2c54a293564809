//! OData v2 conventions shared by every `/api/v1` resource (cpi-api.md §2).
//!
//! Owns: resource-path and key parsing (`Set('k')`, `Set(Id='x',Version='y')`, `''` escapes,
//! percent-decoding), system query options, the `$filter` expression language (eq ne gt lt ge le,
//! and, or, parentheses, `datetime'...'` literals read as UTC), `$orderby`, server-side paging
//! (1000 rows, `__next` with `$skiptoken`), `$select`, `$inlinecount` (`__count` as a string),
//! `/Date(ms)/` dates and the OData error body. Responses are always JSON: Atom XML is not emulated.

use std::cmp::Ordering;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;
use serde_json::{json, Map, Value};

/// Most entries in one response page (CPI server-side paging).
pub const SERVER_PAGE_SIZE: usize = 1000;

/// Errors from parsing a request's OData parts; all map to 400 unless stated.
#[derive(Debug, thiserror::Error)]
pub enum ODataError {
    #[error("Invalid resource path: {0}")]
    Path(String),
    #[error("Invalid query option {0}")]
    Query(String),
    #[error("Invalid filter expression: {0}")]
    Filter(String),
    #[error("Invalid orderby expression: {0}")]
    OrderBy(String),
}

impl IntoResponse for ODataError {
    fn into_response(self) -> Response {
        error(StatusCode::BAD_REQUEST, &self.to_string())
    }
}

/// `/Date(ms)/`
pub fn date(ms: i64) -> String {
    format!("/Date({ms})/")
}

/// Parse `/Date(ms)/` (or `/Date(ms+0000)/`) back to ms.
pub fn parse_date(s: &str) -> Option<i64> {
    let inner = s.strip_prefix("/Date(")?.strip_suffix(")/")?;
    let digits = inner.split(['+', '-']).find(|p| !p.is_empty())?;
    let v: i64 = digits.parse().ok()?;
    Some(if inner.starts_with('-') { -v } else { v })
}

/// A JSON response with CPI's content type.
pub fn json_response(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json;charset=utf-8")],
        v.to_string(),
    )
        .into_response()
}

/// OData error body `{"error":{"code","message":{"lang":"en","value"}}}`.
pub fn error(status: StatusCode, message: &str) -> Response {
    let code = status.canonical_reason().unwrap_or("Error");
    json_response(
        status,
        &json!({"error": {"code": code, "message": {"lang": "en", "value": message}}}),
    )
}

/// `{"d": entity}`
pub fn entity_response(status: StatusCode, entity: Value) -> Response {
    json_response(status, &json!({ "d": entity }))
}

/// Key of a path segment.
#[derive(Debug, Clone, PartialEq)]
pub enum Key {
    Single(String),
    Compound(Vec<(String, String)>),
}

impl Key {
    /// The single key, or the named part of a compound key.
    pub fn get(&self, name: &str) -> Option<&str> {
        match self {
            Key::Single(v) => Some(v),
            Key::Compound(parts) => parts
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str()),
        }
    }
}

/// One resource-path segment: `Name` or `Name(key)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub name: String,
    pub key: Option<Key>,
}

/// Quote a key value for a URI: `'` doubled.
pub fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// Parse a quoted literal `'..'` with `''` escapes, or an unquoted token.
fn parse_key_value(s: &str) -> Result<String, ODataError> {
    let s = s.trim();
    if let Some(inner) = s.strip_prefix('\'') {
        let inner = inner
            .strip_suffix('\'')
            .ok_or_else(|| ODataError::Path(format!("unterminated literal {s}")))?;
        let mut out = String::new();
        let mut chars = inner.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\'' {
                if chars.peek() == Some(&'\'') {
                    chars.next();
                    out.push('\'');
                } else {
                    return Err(ODataError::Path(format!("unescaped quote in {s}")));
                }
            } else {
                out.push(c);
            }
        }
        Ok(out)
    } else if s.is_empty() {
        Err(ODataError::Path("empty key".into()))
    } else {
        Ok(s.to_string())
    }
}

/// Split on `sep` outside single-quoted literals.
fn split_outside_quotes(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    for c in s.chars() {
        if c == '\'' {
            quoted = !quoted;
        }
        if c == sep && !quoted {
            out.push(String::new());
        } else if let Some(last) = out.last_mut() {
            last.push(c);
        }
    }
    out
}

fn parse_segment(raw: &str) -> Result<Segment, ODataError> {
    let dec = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ODataError::Path("invalid percent-encoding".into()))?
        .to_string();
    let Some(open) = dec.find('(') else {
        return Ok(Segment {
            name: dec,
            key: None,
        });
    };
    let name = dec[..open].to_string();
    let rest = dec[open + 1..]
        .strip_suffix(')')
        .ok_or_else(|| ODataError::Path(format!("missing ')' in {dec}")))?;
    let parts = split_outside_quotes(rest, ',');
    let key = if parts.len() == 1 && !parts[0].contains('=') {
        Key::Single(parse_key_value(&parts[0])?)
    } else {
        let mut kv = Vec::new();
        for p in parts {
            let (k, v) = p
                .split_once('=')
                .ok_or_else(|| ODataError::Path(format!("bad key part {p}")))?;
            kv.push((k.trim().to_string(), parse_key_value(v)?));
        }
        Key::Compound(kv)
    };
    Ok(Segment {
        name,
        key: Some(key),
    })
}

/// Parse the resource path after `/api/v1` into segments (empty for the service root).
pub fn parse_path(path: &str) -> Result<Vec<Segment>, ODataError> {
    split_outside_quotes(path, '/')
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(|s| parse_segment(&s))
        .collect()
}

/// Unquote a function-import parameter (`Id='X'`); `None` when the quotes are missing.
pub fn function_param(q: &QueryOptions, name: &str) -> Option<String> {
    let raw = q
        .raw
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())?;
    if raw.len() >= 2 && raw.starts_with('\'') && raw.ends_with('\'') {
        parse_key_value(raw).ok()
    } else {
        None
    }
}

/// System query options of one request.
#[derive(Debug, Clone, Default)]
pub struct QueryOptions {
    pub top: Option<usize>,
    pub skip: Option<usize>,
    pub skiptoken: Option<usize>,
    pub inlinecount: bool,
    pub select: Vec<String>,
    pub filter: Option<String>,
    pub orderby: Option<String>,
    pub expand: Option<String>,
    /// Every query parameter as sent (decoded).
    pub raw: Vec<(String, String)>,
}

impl QueryOptions {
    pub fn parse(query: Option<&str>) -> Result<Self, ODataError> {
        let raw: Vec<(String, String)> = match query {
            Some(q) => {
                serde_urlencoded::from_str(q).map_err(|_| ODataError::Query("encoding".into()))?
            }
            None => Vec::new(),
        };
        let mut q = QueryOptions {
            raw: raw.clone(),
            ..Default::default()
        };
        let num = |k: &str, v: &str| -> Result<usize, ODataError> {
            v.trim()
                .parse()
                .map_err(|_| ODataError::Query(format!("{k}={v}")))
        };
        for (k, v) in raw {
            match k.as_str() {
                "$top" => q.top = Some(num(&k, &v)?),
                "$skip" => q.skip = Some(num(&k, &v)?),
                "$skiptoken" => q.skiptoken = Some(num(&k, &v)?),
                "$inlinecount" => match v.as_str() {
                    "allpages" => q.inlinecount = true,
                    "none" => q.inlinecount = false,
                    _ => return Err(ODataError::Query(format!("$inlinecount={v}"))),
                },
                "$select" => {
                    q.select = v
                        .split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                }
                "$filter" => q.filter = Some(v),
                "$orderby" => q.orderby = Some(v),
                "$expand" => q.expand = Some(v),
                // JSON is always returned; $format is accepted and ignored.
                _ => {}
            }
        }
        Ok(q)
    }

    pub fn has_option(&self, name: &str) -> bool {
        self.raw.iter().any(|(k, _)| k == name)
    }
}

// ---------- $filter ----------

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CmpOp {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Str(String),
    DateTime(i64),
    Num(f64),
    Bool(bool),
    Null,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Cmp {
        field: String,
        op: CmpOp,
        lit: Literal,
    },
}

impl Filter {
    /// Every (field, op) comparison in the expression.
    pub fn comparisons(&self) -> Vec<(&str, CmpOp)> {
        match self {
            Filter::And(a, b) | Filter::Or(a, b) => {
                let mut v = a.comparisons();
                v.extend(b.comparisons());
                v
            }
            Filter::Cmp { field, op, .. } => vec![(field.as_str(), *op)],
        }
    }

    pub fn matches(&self, e: &Value) -> bool {
        match self {
            Filter::And(a, b) => a.matches(e) && b.matches(e),
            Filter::Or(a, b) => a.matches(e) || b.matches(e),
            Filter::Cmp { field, op, lit } => {
                let v = field_value(e, field);
                let ord = compare_value_literal(v, lit);
                match (op, ord) {
                    (CmpOp::Eq, Some(o)) => o == Ordering::Equal,
                    (CmpOp::Ne, Some(o)) => o != Ordering::Equal,
                    (CmpOp::Ne, None) => true,
                    (CmpOp::Gt, Some(o)) => o == Ordering::Greater,
                    (CmpOp::Lt, Some(o)) => o == Ordering::Less,
                    (CmpOp::Ge, Some(o)) => o != Ordering::Less,
                    (CmpOp::Le, Some(o)) => o != Ordering::Greater,
                    (_, None) => false,
                }
            }
        }
    }
}

/// Follow `A/B` through nested objects.
pub fn field_value<'a>(e: &'a Value, path: &str) -> &'a Value {
    let mut cur = e;
    for p in path.split('/') {
        cur = cur.get(p).unwrap_or(&Value::Null);
    }
    cur
}

fn compare_value_literal(v: &Value, lit: &Literal) -> Option<Ordering> {
    match lit {
        Literal::Null => Some(if v.is_null() {
            Ordering::Equal
        } else {
            Ordering::Greater
        }),
        Literal::Str(s) => v.as_str().map(|x| x.cmp(s.as_str())),
        Literal::DateTime(ms) => v.as_str().and_then(parse_date).map(|x| x.cmp(ms)),
        Literal::Num(n) => v.as_f64().and_then(|x| x.partial_cmp(n)),
        Literal::Bool(b) => v.as_bool().map(|x| x.cmp(b)),
    }
}

/// Parse a `datetime'...'` literal as UTC. Zone suffixes are rejected (the real API misreads them).
pub fn parse_datetime_literal(s: &str) -> Result<i64, ODataError> {
    if s.ends_with('Z') || s.rfind(['+']).is_some() || s.get(19..).is_some_and(|t| t.contains('-'))
    {
        return Err(ODataError::Filter(format!(
            "datetime'{s}': time zone suffixes are not supported, the literal is UTC"
        )));
    }
    for f in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(dt) = chrono::NaiveDateTime::parse_from_str(s, f) {
            return Ok(dt.and_utc().timestamp_millis());
        }
    }
    Err(ODataError::Filter(format!("bad datetime literal '{s}'")))
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Lit(Literal),
    Open,
    Close,
}

fn tokenize(s: &str) -> Result<Vec<Tok>, ODataError> {
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    let read_quoted = |i: &mut usize| -> Result<String, ODataError> {
        // chars[*i] == '\''
        *i += 1;
        let mut v = String::new();
        loop {
            match chars.get(*i) {
                None => return Err(ODataError::Filter("unterminated string".into())),
                Some('\'') if chars.get(*i + 1) == Some(&'\'') => {
                    v.push('\'');
                    *i += 2;
                }
                Some('\'') => {
                    *i += 1;
                    return Ok(v);
                }
                Some(c) => {
                    v.push(*c);
                    *i += 1;
                }
            }
        }
    };
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '(' {
            out.push(Tok::Open);
            i += 1;
        } else if c == ')' {
            out.push(Tok::Close);
            i += 1;
        } else if c == '\'' {
            out.push(Tok::Lit(Literal::Str(read_quoted(&mut i)?)));
        } else if c.is_ascii_digit()
            || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let start = i;
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            let t: String = chars[start..i].iter().collect();
            let n = t
                .parse()
                .map_err(|_| ODataError::Filter(format!("bad number {t}")))?;
            out.push(Tok::Lit(Literal::Num(n)));
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric()
                    || chars[i] == '_'
                    || chars[i] == '/'
                    || chars[i] == '.')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if word == "datetime" && chars.get(i) == Some(&'\'') {
                let v = read_quoted(&mut i)?;
                out.push(Tok::Lit(Literal::DateTime(parse_datetime_literal(&v)?)));
            } else if word == "true" || word == "false" {
                out.push(Tok::Lit(Literal::Bool(word == "true")));
            } else if word == "null" {
                out.push(Tok::Lit(Literal::Null));
            } else {
                out.push(Tok::Ident(word));
            }
        } else {
            return Err(ODataError::Filter(format!("unexpected character '{c}'")));
        }
    }
    Ok(out)
}

struct FilterParser {
    toks: Vec<Tok>,
    pos: usize,
}

impl FilterParser {
    fn peek_word(&self, w: &str) -> bool {
        matches!(self.toks.get(self.pos), Some(Tok::Ident(x)) if x == w)
    }
    fn or(&mut self) -> Result<Filter, ODataError> {
        let mut l = self.and()?;
        while self.peek_word("or") {
            self.pos += 1;
            let r = self.and()?;
            l = Filter::Or(Box::new(l), Box::new(r));
        }
        Ok(l)
    }
    fn and(&mut self) -> Result<Filter, ODataError> {
        let mut l = self.primary()?;
        while self.peek_word("and") {
            self.pos += 1;
            let r = self.primary()?;
            l = Filter::And(Box::new(l), Box::new(r));
        }
        Ok(l)
    }
    fn primary(&mut self) -> Result<Filter, ODataError> {
        match self.toks.get(self.pos).cloned() {
            Some(Tok::Open) => {
                self.pos += 1;
                let e = self.or()?;
                if self.toks.get(self.pos) != Some(&Tok::Close) {
                    return Err(ODataError::Filter("missing ')'".into()));
                }
                self.pos += 1;
                Ok(e)
            }
            Some(Tok::Ident(field)) => {
                let op = match self.toks.get(self.pos + 1) {
                    Some(Tok::Ident(o)) => match o.as_str() {
                        "eq" => CmpOp::Eq,
                        "ne" => CmpOp::Ne,
                        "gt" => CmpOp::Gt,
                        "lt" => CmpOp::Lt,
                        "ge" => CmpOp::Ge,
                        "le" => CmpOp::Le,
                        _ => return Err(ODataError::Filter(format!("unsupported operator {o}"))),
                    },
                    _ => {
                        return Err(ODataError::Filter(format!(
                            "operator expected after {field}"
                        )))
                    }
                };
                let lit = match self.toks.get(self.pos + 2) {
                    Some(Tok::Lit(l)) => l.clone(),
                    _ => {
                        return Err(ODataError::Filter(format!(
                            "literal expected after {field}"
                        )))
                    }
                };
                self.pos += 3;
                Ok(Filter::Cmp { field, op, lit })
            }
            other => Err(ODataError::Filter(format!("unexpected {other:?}"))),
        }
    }
}

/// Parse a `$filter` expression.
pub fn parse_filter(s: &str) -> Result<Filter, ODataError> {
    let toks = tokenize(s)?;
    let mut p = FilterParser { toks, pos: 0 };
    let f = p.or()?;
    if p.pos != p.toks.len() {
        return Err(ODataError::Filter("trailing input".into()));
    }
    Ok(f)
}

// ---------- $orderby ----------

fn compare_values(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Less,
        (_, Value::Null) => Ordering::Greater,
        (Value::String(x), Value::String(y)) => match (parse_date(x), parse_date(y)) {
            (Some(p), Some(q)) => p.cmp(&q),
            _ => x.cmp(y),
        },
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        _ => Ordering::Equal,
    }
}

/// Parse `$orderby` into (field, descending) pairs.
pub fn parse_orderby(s: &str) -> Result<Vec<(String, bool)>, ODataError> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let words: Vec<&str> = part.split_whitespace().collect();
        match words.as_slice() {
            [f] => out.push((f.to_string(), false)),
            [f, "asc"] => out.push((f.to_string(), false)),
            [f, "desc"] => out.push((f.to_string(), true)),
            _ => return Err(ODataError::OrderBy(s.to_string())),
        }
    }
    Ok(out)
}

pub fn sort(items: &mut [Value], keys: &[(String, bool)]) {
    items.sort_by(|a, b| {
        for (f, desc) in keys {
            let o = compare_values(field_value(a, f), field_value(b, f));
            let o = if *desc { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    });
}

/// Apply `$select` (keeping `__metadata`).
pub fn select(e: Value, fields: &[String]) -> Value {
    if fields.is_empty() || fields.iter().any(|f| f == "*") {
        return e;
    }
    match e {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                if k == "__metadata" || fields.contains(&k) {
                    out.insert(k, v);
                }
            }
            Value::Object(out)
        }
        other => other,
    }
}

/// Filter (already applied by caller or here), order, page and wrap a collection:
/// `{"d":{"results":[..], "__count":"N", "__next":"..."}}`.
/// `collection_url` is the absolute URL of the entity set, used for `__next`.
pub fn collection_response(
    mut items: Vec<Value>,
    q: &QueryOptions,
    collection_url: &str,
    filter: Option<&Filter>,
    orderby: Option<&[(String, bool)]>,
) -> Response {
    if let Some(f) = filter {
        items.retain(|e| f.matches(e));
    }
    if let Some(keys) = orderby {
        sort(&mut items, keys);
    }
    let total = items.len();
    let offset = q.skiptoken.or(q.skip).unwrap_or(0);
    let limit = q.top.unwrap_or(usize::MAX);
    let available = total.saturating_sub(offset);
    let page_len = available.min(limit).min(SERVER_PAGE_SIZE);
    let page: Vec<Value> = items
        .into_iter()
        .skip(offset)
        .take(page_len)
        .map(|e| select(e, &q.select))
        .collect();
    let mut d = Map::new();
    if q.inlinecount {
        d.insert("__count".into(), Value::String(total.to_string()));
    }
    d.insert("results".into(), Value::Array(page));
    if page_len < available && page_len < limit {
        let mut params: Vec<(String, String)> = q
            .raw
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "$skip" | "$skiptoken" | "$top"))
            .cloned()
            .collect();
        if let Some(top) = q.top {
            params.push(("$top".into(), (top - page_len).to_string()));
        }
        params.push(("$skiptoken".into(), (offset + page_len).to_string()));
        let qs = serde_urlencoded::to_string(&params).unwrap_or_default();
        d.insert(
            "__next".into(),
            Value::String(format!("{collection_url}?{qs}")),
        );
    }
    json_response(StatusCode::OK, &json!({ "d": Value::Object(d) }))
}

/// `/$count` response: plain text.
pub fn count_response(n: usize) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain;charset=utf-8")],
        n.to_string(),
    )
        .into_response()
}

/// `__metadata` for an entity.
pub fn metadata(uri: &str, ty: &str) -> Value {
    json!({"id": uri, "uri": uri, "type": ty})
}

/// `{"__deferred":{"uri":..}}`
pub fn deferred(uri: &str) -> Value {
    json!({"__deferred": {"uri": uri}})
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys: single, compound, `''` escapes, percent-decoding, and quotes protecting `/` and `,`.
    #[test]
    fn key_syntax() {
        let s = parse_path("/UserCredentials('it''s')").unwrap();
        assert_eq!(s[0].key, Some(Key::Single("it's".into())));
        let s = parse_path("/IntegrationDesigntimeArtifacts(Id='a,b',Version='active')/$value")
            .unwrap();
        assert_eq!(s[0].key.as_ref().unwrap().get("Id"), Some("a,b"));
        assert_eq!(s[0].key.as_ref().unwrap().get("Version"), Some("active"));
        assert_eq!(s[1].name, "$value");
        let s = parse_path("/UserCredentials(%27a%2Fb%27)").unwrap();
        assert_eq!(s[0].key, Some(Key::Single("a/b".into())));
        let s = parse_path("/X('a/b')/Y").unwrap();
        assert_eq!(s.len(), 2);
        assert!(parse_path("/X('a)").is_err());
        assert!(parse_path("/X('a'b')").is_err());
    }

    /// Filter grammar: precedence of and over or, parentheses, datetime literals as UTC, zone
    /// suffixes rejected.
    #[test]
    fn filter_grammar() {
        let f = parse_filter("Status eq 'A' or Status eq 'B' and LogLevel eq 'INFO'").unwrap();
        assert!(matches!(f, Filter::Or(_, _)));
        let e = serde_json::json!({"Status": "B", "LogLevel": "INFO", "LogEnd": "/Date(1612137600000)/"});
        assert!(f.matches(&e));
        let f = parse_filter(
            "(Status eq 'A' or Status eq 'B') and LogEnd ge datetime'2021-02-01T00:00:00'",
        )
        .unwrap();
        assert!(f.matches(&e));
        let f = parse_filter("LogEnd gt datetime'2021-02-01T00:00:00.001'").unwrap();
        assert!(!f.matches(&e));
        assert!(parse_filter("LogEnd gt datetime'2021-02-01T00:00:00Z'").is_err());
        assert!(parse_filter("LogEnd gt datetime'2021-02-01T00:00:00+01:00'").is_err());
        assert!(parse_filter("Status eq").is_err());
        assert!(parse_filter("Name eq 'it''s'")
            .unwrap()
            .matches(&serde_json::json!({"Name": "it's"})));
    }

    /// `/Date(ms)/` formatting and parsing are inverse.
    #[test]
    fn dates() {
        assert_eq!(date(1765786792442), "/Date(1765786792442)/");
        assert_eq!(parse_date("/Date(1765786792442)/"), Some(1765786792442));
    }
}
