//! Python's `str.format`, as Freqtrade users write their webhook templates.
//!
//! The format-spec mini-language is implemented in full for the value types a trade event
//! holds: fill and alignment (`<`, `>`, `^`, `=`), sign (`+`, `-`, space), `z`, `#`, `0`, width,
//! grouping (`,` and `_`), precision, and the types `s`, `d`, `b`, `o`, `x`, `X`, `c`, `n`, `e`,
//! `E`, `f`, `F`, `g`, `G` and `%`. A float without a type prints as Python's `repr` does
//! (`1e-05`, `100.0`), and a datetime takes a `strftime` spec (`{close_date:%Y-%m-%d %H:%M}`).
//! Where Python would raise (a missing field, a numeric spec on `None`, `d` on a float), this
//! returns a [`FormatError`] saying what went wrong.
//!
//! The module is pure and is tested against CPython itself (`tests/pyfmt_oracle.rs`).
//!
//! ```
//! use tradehook::render::pyfmt::{Value, format};
//! let ctx = |name: &str| match name {
//!     "pair" => Some(Value::Str("BTC/USDT".into())),
//!     "profit_ratio" => Some(Value::Float(0.0287)),
//!     "amount" => Some(Value::Float(12345.678)),
//!     _ => None,
//! };
//! assert_eq!(
//!     format("{pair}: {profit_ratio:.2%} of {amount:,.1f} {{ok}}", &ctx).unwrap(),
//!     "BTC/USDT: 2.87% of 12,345.7 {ok}"
//! );
//! assert_eq!(format("{enter_tag}", &ctx).unwrap_err().to_string(), "no field named 'enter_tag'");
//! ```

use std::fmt::Write as _;

use jiff::Timestamp;

/// A value a template can name.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    /// A UTC datetime, printed as Python prints an aware `datetime`.
    DateTime(Timestamp),
    List(Vec<Value>),
    Dict(Vec<(String, Value)>),
}

/// Why a template could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("no field named '{0}'")]
    MissingField(String),
    #[error("{0}")]
    Template(String),
    #[error("field '{field}': {message}")]
    Spec { field: String, message: String },
    #[error("the rendered text would be longer than {limit} bytes")]
    TooLong { limit: usize },
}

/// The most text one render may produce (a delivery body is never larger): every field's
/// width is capped, but a template repeating a wide field must not take gigabytes.
pub const MAX_OUTPUT: usize = 1 << 20;

/// How deeply replacement fields may nest in specs: `{x:{width}}` is fine, a third level is
/// refused, as Python refuses it ("Max string recursion exceeded").
const MAX_NESTING: u8 = 2;

/// Renders `template` with the values `lookup` finds by name.
pub fn format(
    template: &str,
    lookup: &dyn Fn(&str) -> Option<Value>,
) -> Result<String, FormatError> {
    format_escaped(template, lookup, &|text, out| out.push_str(text))
}

/// Renders `template`, passing each replacement field's text through `escape` (for a chat
/// service's markup: a `<` in a value must not open an HTML tag).
pub fn format_escaped(
    template: &str,
    lookup: &dyn Fn(&str) -> Option<Value>,
    escape: &dyn Fn(&str, &mut String),
) -> Result<String, FormatError> {
    let mut budget = MAX_OUTPUT;
    format_within(template, lookup, escape, &mut budget)
}

/// Renders `template` into at most `budget` bytes, and takes what it wrote from the budget:
/// several templates of one body share one budget.
pub fn format_within(
    template: &str,
    lookup: &dyn Fn(&str) -> Option<Value>,
    escape: &dyn Fn(&str, &mut String),
    budget: &mut usize,
) -> Result<String, FormatError> {
    let out = format_nested(template, lookup, escape, *budget, MAX_NESTING)?;
    *budget -= out.len();
    Ok(out)
}

fn format_nested(
    template: &str,
    lookup: &dyn Fn(&str) -> Option<Value>,
    escape: &dyn Fn(&str, &mut String),
    limit: usize,
    depth: u8,
) -> Result<String, FormatError> {
    let too_long = || FormatError::TooLong { limit: MAX_OUTPUT };
    if template.len() > limit {
        return Err(too_long());
    }
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let c = rest.as_bytes()[i];
        let after = &rest[i + 1..];
        if after.as_bytes().first() == Some(&c) {
            out.push(c as char);
            rest = &after[1..];
            continue;
        }
        if c == b'}' {
            return Err(FormatError::Template(
                "single '}' encountered in format string".into(),
            ));
        }
        let end = field_end(after)?;
        let field = &after[..end];
        rest = &after[end + 1..];
        let mut text = String::new();
        render_field(field, lookup, &mut text, limit, depth)?;
        escape(&text, &mut out);
        if out.len() > limit {
            return Err(too_long());
        }
    }
    out.push_str(rest);
    if out.len() > limit {
        return Err(too_long());
    }
    Ok(out)
}

/// The index of the `}` closing a replacement field that starts just before `text`; nested
/// `{…}` in the spec are allowed, as in `{x:{width}}`.
fn field_end(text: &str) -> Result<usize, FormatError> {
    let mut depth = 0usize;
    let mut in_index = false;
    for (i, c) in text.char_indices() {
        match c {
            '[' if depth == 0 => in_index = true,
            ']' if depth == 0 => in_index = false,
            '{' if !in_index => depth += 1,
            '}' if !in_index || depth > 0 => {
                if depth == 0 {
                    return Ok(i);
                }
                depth -= 1;
            }
            _ => {}
        }
    }
    Err(FormatError::Template(
        "expected '}' before end of string".into(),
    ))
}

fn render_field(
    field: &str,
    lookup: &dyn Fn(&str) -> Option<Value>,
    out: &mut String,
    limit: usize,
    depth: u8,
) -> Result<(), FormatError> {
    // field_name ["!" conversion] [":" format_spec]; the name may hold "[...]" with any text.
    let mut name_end = field.len();
    let mut in_index = false;
    for (i, c) in field.char_indices() {
        match c {
            '[' => in_index = true,
            ']' => in_index = false,
            '!' | ':' if !in_index => {
                name_end = i;
                break;
            }
            _ => {}
        }
    }
    let name = &field[..name_end];
    let mut tail = &field[name_end..];
    let mut conversion = None;
    if let Some(t) = tail.strip_prefix('!') {
        let mut chars = t.chars();
        conversion = Some(chars.next().ok_or_else(|| {
            FormatError::Template("end of string while looking for conversion specifier".into())
        })?);
        tail = chars.as_str();
        if !tail.is_empty() && !tail.starts_with(':') {
            return Err(FormatError::Template(
                "expected ':' after conversion specifier".into(),
            ));
        }
    }
    let spec_text = tail.strip_prefix(':').unwrap_or("");
    let value = resolve(name, lookup)?;
    let value = match conversion {
        None => value,
        Some('s') => Value::Str(str_of(&value)),
        Some('r') => Value::Str(repr(&value, false)),
        Some('a') => Value::Str(repr(&value, true)),
        Some(c) => {
            return Err(FormatError::Template(format!(
                "unknown conversion specifier {c}"
            )));
        }
    };
    // A spec may itself hold replacement fields, one level down.
    let spec_owned;
    let spec_text = if spec_text.contains('{') {
        let depth = depth
            .checked_sub(1)
            .filter(|d| *d > 0)
            .ok_or_else(|| FormatError::Template("Max string recursion exceeded".into()))?;
        spec_owned = format_nested(spec_text, lookup, &|t, o| o.push_str(t), limit, depth)?;
        spec_owned.as_str()
    } else {
        spec_text
    };
    format_value(&value, spec_text, out).map_err(|message| FormatError::Spec {
        field: name.to_owned(),
        message,
    })
}

/// Looks up `name`, `name[key]`, `name[0]`.
fn resolve(name: &str, lookup: &dyn Fn(&str) -> Option<Value>) -> Result<Value, FormatError> {
    let first_end = name.find(['[', '.']).unwrap_or(name.len());
    let first = &name[..first_end];
    if first.is_empty() {
        return Err(FormatError::Template(
            "positional fields ({} or {0}) are not available; name a field, as in {pair}".into(),
        ));
    }
    if first.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FormatError::Template(format!(
            "positional field {{{first}}} is not available; name a field, as in {{pair}}"
        )));
    }
    let mut value = lookup(first).ok_or_else(|| FormatError::MissingField(first.to_owned()))?;
    let mut rest = &name[first_end..];
    while !rest.is_empty() {
        if let Some(attr) = rest.strip_prefix('.') {
            let end = attr.find(['[', '.']).unwrap_or(attr.len());
            return Err(FormatError::Template(format!(
                "'{}' has no attribute '{}'; use [{}] to index",
                type_name(&value),
                &attr[..end],
                &attr[..end]
            )));
        }
        let inner = rest
            .strip_prefix('[')
            .expect("a name part starts with [ or .");
        let close = inner
            .find(']')
            .ok_or_else(|| FormatError::Template("missing ']' in format string".into()))?;
        let key = &inner[..close];
        rest = &inner[close + 1..];
        if !rest.is_empty() && !rest.starts_with(['[', '.']) {
            return Err(FormatError::Template(
                "only '.' or '[' may follow ']' in format field specifier".into(),
            ));
        }
        value = match (&value, key.parse::<usize>()) {
            (Value::List(items), Ok(i)) => items
                .get(i)
                .cloned()
                .ok_or_else(|| FormatError::MissingField(format!("{name} (index {i})")))?,
            (Value::Dict(entries), _) => entries
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| FormatError::MissingField(format!("{first}[{key}]")))?,
            (other, _) => {
                return Err(FormatError::Template(format!(
                    "'{}' object is not subscriptable",
                    type_name(other)
                )));
            }
        };
    }
    Ok(value)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::None => "NoneType",
        Value::Bool(_) => "bool",
        Value::Int(_) => "int",
        Value::Float(_) => "float",
        Value::Str(_) => "str",
        Value::DateTime(_) => "datetime.datetime",
        Value::List(_) => "list",
        Value::Dict(_) => "dict",
    }
}

/// Python's `str(value)`.
pub fn str_of(v: &Value) -> String {
    match v {
        Value::Str(s) => s.clone(),
        Value::DateTime(t) => datetime_str(*t),
        other => repr(other, false),
    }
}

/// Python's `repr(value)` (`ascii(value)` when `ascii`).
pub fn repr(v: &Value, ascii: bool) -> String {
    match v {
        Value::None => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => float_repr(*f),
        Value::Str(s) => str_repr(s, ascii),
        Value::DateTime(t) => {
            let dt = t.to_zoned(jiff::tz::TimeZone::UTC);
            let mut s = format!(
                "datetime.datetime({}, {}, {}, {}, {}",
                dt.year(),
                dt.month(),
                dt.day(),
                dt.hour(),
                dt.minute()
            );
            let micros = dt.subsec_nanosecond() / 1000;
            if dt.second() != 0 || micros != 0 {
                let _ = write!(s, ", {}", dt.second());
            }
            if micros != 0 {
                let _ = write!(s, ", {micros}");
            }
            s.push_str(", tzinfo=datetime.timezone.utc)");
            s
        }
        Value::List(items) => {
            let parts: Vec<String> = items.iter().map(|i| repr(i, ascii)).collect();
            format!("[{}]", parts.join(", "))
        }
        Value::Dict(entries) => {
            let parts: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{}: {}", str_repr(k, ascii), repr(v, ascii)))
                .collect();
            format!("{{{}}}", parts.join(", "))
        }
    }
}

fn str_repr(s: &str, ascii: bool) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
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
            c if (ascii && (c as u32) > 0x7f) || (!ascii && !is_printable(c)) => {
                push_code_escape(&mut out, c);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// `\xNN`, `\uNNNN` or `\UNNNNNNNN`, as Python's repr escapes a character.
fn push_code_escape(out: &mut String, c: char) {
    let n = c as u32;
    let _ = if n <= 0xff {
        write!(out, "\\x{n:02x}")
    } else if n <= 0xffff {
        write!(out, "\\u{n:04x}")
    } else {
        write!(out, "\\U{n:08x}")
    };
}

/// An approximation of Python's `str.isprintable` for repr: control and format characters,
/// separators other than the space, and unassigned surrogates are escaped.
fn is_printable(c: char) -> bool {
    let n = c as u32;
    !(n < 0x20
        || (0x7f..=0xa0).contains(&n)
        || n == 0xad
        || (0x2000..=0x200f).contains(&n)
        || (0x2028..=0x202f).contains(&n)
        || (0x205f..=0x206f).contains(&n)
        || n == 0x3000
        || n == 0xfeff
        || (0xfff9..=0xfffb).contains(&n)
        || (0xe000..=0xf8ff).contains(&n))
}

/// `str()` of an aware UTC datetime: `2024-05-01 12:00:00.123456+00:00`.
pub fn datetime_str(t: Timestamp) -> String {
    let dt = t.to_zoned(jiff::tz::TimeZone::UTC);
    let micros = dt.subsec_nanosecond() / 1000;
    let mut s = format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    );
    if micros != 0 {
        let _ = write!(s, ".{micros:06}");
    }
    s.push_str("+00:00");
    s
}

/// Python's `repr(float)`: the shortest text that reads back as the same float, in fixed
/// notation between 1e-4 and 1e16 and in exponent notation outside.
pub fn float_repr(f: f64) -> String {
    repr_with(f, false)
}

/// `repr`, or with `alternate` (`{:#}`) a decimal point even in exponent notation.
fn repr_with(f: f64, alternate: bool) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.into();
    }
    let (negative, digits, exp) = shortest_digits(f);
    let decpt = exp + 1;
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    if decpt <= -4 || decpt > 16 {
        out.push_str(&digits[..1]);
        if digits.len() > 1 || alternate {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        push_exponent(&mut out, exp, 'e');
    } else {
        out.push_str(&fixed_from_digits(&digits, decpt));
        if !out.contains('.') {
            out.push_str(".0");
        }
    }
    out
}

/// Shortest round-trip digits of |f| and the decimal exponent of the first digit.
///
/// When two texts of that length read back as `f` and lie equally near it (2062116443042876.25
/// is between …876.2 and …876.3), Python's `repr` takes the even last digit and Rust's `{:e}`
/// the upper one; the same number of digits rounded exactly (`{:.N$e}`, half to even) is
/// Python's, and is used whenever it reads back as `f`.
fn shortest_digits(f: f64) -> (bool, String, i32) {
    let shortest = format!("{:e}", f.abs());
    let length = shortest
        .split_once('e')
        .map_or(0, |(m, _)| m.bytes().filter(u8::is_ascii_digit).count());
    let exact = format!("{:.*e}", length.saturating_sub(1), f.abs());
    let text = if exact.parse::<f64>().ok() == Some(f.abs()) {
        exact
    } else {
        shortest
    };
    let (mantissa, exp) = text.split_once('e').expect("{:e} has an exponent");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    (
        f.is_sign_negative(),
        digits,
        exp.parse().expect("{:e} exponent is an integer"),
    )
}

/// Lays out `digits` (d1 d2 d3 … meaning 0.d1d2d3 × 10^decpt) in fixed notation.
fn fixed_from_digits(digits: &str, decpt: i32) -> String {
    if decpt <= 0 {
        format!("0.{}{}", "0".repeat((-decpt) as usize), digits)
    } else if decpt as usize >= digits.len() {
        format!("{}{}", digits, "0".repeat(decpt as usize - digits.len()))
    } else {
        let (int, frac) = digits.split_at(decpt as usize);
        format!("{int}.{frac}")
    }
}

fn push_exponent(out: &mut String, exp: i32, e: char) {
    out.push(e);
    out.push(if exp < 0 { '-' } else { '+' });
    let _ = write!(out, "{:02}", exp.unsigned_abs());
}

/// A parsed format spec.
#[derive(Debug, Default)]
struct Spec {
    fill: Option<char>,
    align: Option<char>,
    sign: Option<char>,
    z: bool,
    alternate: bool,
    zero: bool,
    width: usize,
    grouping: Option<char>,
    precision: Option<usize>,
    kind: Option<char>,
}

/// Parses a spec for a type whose default alignment is `default_align`.
fn parse_spec(text: &str, default_align: char) -> Result<Spec, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut spec = Spec::default();
    let is_align = |c: char| matches!(c, '<' | '>' | '^' | '=');
    if chars.len() >= 2 && is_align(chars[1]) {
        spec.fill = Some(chars[0]);
        spec.align = Some(chars[1]);
        i = 2;
    } else if !chars.is_empty() && is_align(chars[0]) {
        spec.align = Some(chars[0]);
        i = 1;
    }
    if i < chars.len() && matches!(chars[i], '+' | '-' | ' ') {
        spec.sign = Some(chars[i]);
        i += 1;
    }
    if i < chars.len() && chars[i] == 'z' {
        spec.z = true;
        i += 1;
    }
    if i < chars.len() && chars[i] == '#' {
        spec.alternate = true;
        i += 1;
    }
    if i < chars.len() && chars[i] == '0' {
        spec.zero = true;
        i += 1;
    }
    let start = i;
    while i < chars.len() && chars[i].is_ascii_digit() {
        i += 1;
    }
    if i > start {
        spec.width = digits_value(&chars[start..i])?;
    }
    if i < chars.len() && matches!(chars[i], ',' | '_') {
        spec.grouping = Some(chars[i]);
        i += 1;
        if i < chars.len() && matches!(chars[i], ',' | '_') {
            return Err("Cannot specify both ',' and '_'.".into());
        }
    }
    if i < chars.len() && chars[i] == '.' {
        i += 1;
        let start = i;
        while i < chars.len() && chars[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err("Format specifier missing precision".into());
        }
        spec.precision = Some(digits_value(&chars[start..i])?);
    }
    if chars.len() - i > 1 {
        return Err("Invalid format specifier".into());
    }
    if i < chars.len() {
        spec.kind = Some(chars[i]);
    }
    // The '0' flag pads with zeros; numbers (right-aligned by default) pad after the sign.
    if spec.zero && spec.fill.is_none() {
        spec.fill = Some('0');
        if spec.align.is_none() && default_align == '>' {
            spec.align = Some('=');
        }
    }
    if let Some(g) = spec.grouping {
        let allowed = match spec.kind {
            None | Some('d' | 'e' | 'E' | 'f' | 'F' | 'g' | 'G' | '%') => true,
            Some('b' | 'o' | 'x' | 'X') => g == '_',
            _ => false,
        };
        if !allowed {
            let kind = spec.kind.expect("a type was named");
            return Err(format!("Cannot specify '{g}' with '{kind}'."));
        }
    }
    Ok(spec)
}

fn digits_value(digits: &[char]) -> Result<usize, String> {
    let text: String = digits.iter().collect();
    match text.parse::<usize>() {
        Ok(n) if n <= 10_000 => Ok(n),
        _ => Err("Too many decimal digits in format string".into()),
    }
}

/// `format(value, spec)`.
fn format_value(value: &Value, spec_text: &str, out: &mut String) -> Result<(), String> {
    if spec_text.is_empty() {
        out.push_str(&str_of(value));
        return Ok(());
    }
    match value {
        Value::DateTime(t) => strftime(*t, spec_text, out),
        Value::Str(s) => format_str(s, &parse_spec(spec_text, '<')?, out),
        Value::Int(i) => format_int(*i, &parse_spec(spec_text, '>')?, out),
        Value::Bool(b) => format_int(*b as i128, &parse_spec(spec_text, '>')?, out),
        Value::Float(f) => format_float(*f, &parse_spec(spec_text, '>')?, out),
        other => Err(format!(
            "unsupported format string passed to {}.__format__",
            type_name(other)
        )),
    }
}

fn format_str(s: &str, spec: &Spec, out: &mut String) -> Result<(), String> {
    match spec.kind {
        None | Some('s') => {}
        Some(k) => {
            return Err(format!(
                "Unknown format code '{k}' for object of type 'str'"
            ));
        }
    }
    if spec.sign.is_some() {
        return Err("Sign not allowed in string format specifier".into());
    }
    if spec.z {
        return Err("Negative zero coercion (z) not allowed in format specifier".into());
    }
    if spec.alternate {
        return Err("Alternate form (#) not allowed in string format specifier".into());
    }
    if spec.align == Some('=') {
        return Err("'=' alignment not allowed in string format specifier".into());
    }
    if spec.grouping.is_some() {
        return Err(format!(
            "Cannot specify '{}' with 's'.",
            spec.grouping.unwrap_or(',')
        ));
    }
    let text: String = match spec.precision {
        Some(p) => s.chars().take(p).collect(),
        None => s.to_owned(),
    };
    pad(out, "", &text, spec, '<');
    Ok(())
}

fn format_int(n: i128, spec: &Spec, out: &mut String) -> Result<(), String> {
    let kind = spec.kind.unwrap_or('d');
    match kind {
        'e' | 'E' | 'f' | 'F' | 'g' | 'G' | '%' => return format_float(n as f64, spec, out),
        'd' | 'n' | 'b' | 'o' | 'x' | 'X' | 'c' => {}
        k => {
            return Err(format!(
                "Unknown format code '{k}' for object of type 'int'"
            ));
        }
    }
    if spec.precision.is_some() {
        return Err("Precision not allowed in integer format specifier".into());
    }
    if spec.z {
        return Err("Negative zero coercion (z) not allowed in integer format specifier".into());
    }
    if kind == 'c' {
        if spec.sign.is_some() {
            return Err("Sign not allowed with integer format specifier 'c'".into());
        }
        if spec.alternate {
            return Err("Alternate form (#) not allowed with integer format specifier 'c'".into());
        }
        let c = u32::try_from(n)
            .ok()
            .and_then(char::from_u32)
            .ok_or("%c arg not in range(0x110000)")?;
        pad(out, "", &c.to_string(), spec, '>');
        return Ok(());
    }
    let magnitude = n.unsigned_abs();
    let (digits, prefix, group_every) = match kind {
        'b' => (format!("{magnitude:b}"), "0b", 4),
        'o' => (format!("{magnitude:o}"), "0o", 4),
        'x' => (format!("{magnitude:x}"), "0x", 4),
        'X' => (format!("{magnitude:X}"), "0X", 4),
        _ => (magnitude.to_string(), "", 3),
    };
    let mut lead = sign_text(n < 0, spec.sign).to_owned();
    if spec.alternate {
        lead.push_str(prefix);
    }
    let body = group_digits(&digits, "", spec, &lead, group_every);
    pad(out, &lead, &body, spec, '>');
    Ok(())
}

fn sign_text(negative: bool, sign: Option<char>) -> &'static str {
    match (negative, sign) {
        (true, _) => "-",
        (false, Some('+')) => "+",
        (false, Some(' ')) => " ",
        _ => "",
    }
}

/// Inserts the grouping separator in `int_digits` and appends `rest`. When padding with '0'
/// under '=' alignment, Python pads the digits themselves (separators included) to the width,
/// as CPython's `_PyUnicode_InsertThousandsGrouping` does.
fn group_digits(int_digits: &str, rest: &str, spec: &Spec, lead: &str, every: usize) -> String {
    let Some(sep) = spec.grouping else {
        return format!("{int_digits}{rest}");
    };
    let zero_pad = spec.fill == Some('0') && spec.align == Some('=');
    let mut min_width = if zero_pad {
        spec.width as isize - (lead.chars().count() + rest.chars().count()) as isize
    } else {
        0
    };
    let digits = int_digits.as_bytes();
    let mut remaining = digits.len() as isize;
    let mut groups: Vec<String> = Vec::new();
    loop {
        let l = (every as isize).min(remaining.max(min_width).max(1));
        let zeros = (l - remaining).max(0) as usize;
        let chars = remaining.min(l).max(0);
        let from = (remaining - chars) as usize;
        let mut group = "0".repeat(zeros);
        group.push_str(std::str::from_utf8(&digits[from..remaining as usize]).unwrap_or(""));
        groups.push(group);
        remaining -= chars;
        min_width -= l;
        if remaining <= 0 && min_width <= 0 {
            break;
        }
        min_width -= 1;
    }
    groups.reverse();
    let mut text = groups.join(&sep.to_string());
    text.push_str(rest);
    text
}

fn format_float(f: f64, spec: &Spec, out: &mut String) -> Result<(), String> {
    let kind = spec.kind;
    match kind {
        None | Some('e' | 'E' | 'f' | 'F' | 'g' | 'G' | 'n' | '%') => {}
        Some(k) => {
            return Err(format!(
                "Unknown format code '{k}' for object of type 'float'"
            ));
        }
    }
    if kind == Some('n') && spec.grouping.is_some() {
        return Err("Cannot specify ',' with 'n'.".into());
    }
    let upper = matches!(kind, Some('E' | 'F' | 'G'));
    let mut value = if kind == Some('%') { f * 100.0 } else { f };
    let (number, suffix) = if !value.is_finite() {
        let t = if value.is_nan() { "nan" } else { "inf" };
        (
            if upper {
                t.to_uppercase()
            } else {
                t.to_owned()
            },
            if kind == Some('%') { "%" } else { "" },
        )
    } else {
        let text = match kind {
            None => match spec.precision {
                None => repr_with(value.abs(), spec.alternate),
                Some(p) => general(value.abs(), p.max(1), spec.alternate, true, false),
            },
            Some('f' | 'F' | '%') => {
                let p = spec.precision.unwrap_or(6);
                let mut t = format!("{:.*}", p, value.abs());
                if spec.alternate && p == 0 {
                    t.push('.');
                }
                t
            }
            Some('e' | 'E') => exponent_form(
                value.abs(),
                spec.precision.unwrap_or(6),
                spec.alternate,
                upper,
            ),
            Some('g' | 'G' | 'n') => general(
                value.abs(),
                spec.precision.unwrap_or(6).max(1),
                spec.alternate,
                false,
                upper,
            ),
            Some(_) => unreachable!("checked above"),
        };
        if spec.z && is_zero_text(&text) {
            value = 0.0;
        }
        (text, if kind == Some('%') { "%" } else { "" })
    };
    let negative = value.is_sign_negative() && !value.is_nan();
    let lead = sign_text(negative, spec.sign);
    // Grouping applies to the integer part only.
    let split = number
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(number.len());
    let (int_part, rest) = number.split_at(split);
    let rest = format!("{rest}{suffix}");
    let body = if value.is_finite() {
        group_digits(int_part, &rest, spec, lead, 3)
    } else {
        format!("{int_part}{rest}")
    };
    pad(out, lead, &body, spec, '>');
    Ok(())
}

fn is_zero_text(text: &str) -> bool {
    let mantissa = text.split(['e', 'E']).next().unwrap_or(text);
    mantissa.chars().all(|c| c == '0' || c == '.')
}

/// `e` format: one digit, `precision` decimals, a signed two-digit exponent.
fn exponent_form(f: f64, precision: usize, alternate: bool, upper: bool) -> String {
    let text = format!("{:.*e}", precision, f);
    let (mantissa, exp) = text.split_once('e').expect("{:e} has an exponent");
    let mut out = mantissa.to_owned();
    if alternate && precision == 0 {
        out.push('.');
    }
    push_exponent(
        &mut out,
        exp.parse().expect("{:e} exponent is an integer"),
        if upper { 'E' } else { 'e' },
    );
    out
}

/// `g` format with `precision` significant digits. `add_dot_0` is the no-type case with a
/// precision, which keeps at least one decimal in fixed notation.
fn general(f: f64, precision: usize, alternate: bool, add_dot_0: bool, upper: bool) -> String {
    let sci = format!("{:.*e}", precision - 1, f);
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is an integer");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    // CPython's threshold is one lower without a type: `format(100.0, '.3')` is '1e+02'.
    let use_exponent = exp < -4 || exp >= precision as i32 - add_dot_0 as i32;
    let strip = |mut s: String| {
        if !alternate && s.contains('.') {
            while s.ends_with('0') {
                s.pop();
            }
            if s.ends_with('.') {
                s.pop();
            }
        }
        s
    };
    if use_exponent {
        let mut m = String::new();
        m.push_str(&digits[..1]);
        if digits.len() > 1 || alternate {
            m.push('.');
            m.push_str(&digits[1..]);
        }
        let mut out = strip(m);
        push_exponent(&mut out, exp, if upper { 'E' } else { 'e' });
        out
    } else {
        let mut out = strip(fixed_from_digits(&digits, exp + 1));
        if alternate && !out.contains('.') {
            out.push('.');
        }
        if add_dot_0 && !out.contains('.') {
            out.push_str(".0");
        }
        out
    }
}

/// Pads `lead` + `body` to the spec's width with its fill and alignment.
fn pad(out: &mut String, lead: &str, body: &str, spec: &Spec, default_align: char) {
    let len = lead.chars().count() + body.chars().count();
    let fill = spec.fill.unwrap_or(' ');
    let align = spec.align.unwrap_or(default_align);
    let missing = spec.width.saturating_sub(len);
    let (left, right) = match align {
        '<' => (0, missing),
        '^' => (missing / 2, missing - missing / 2),
        _ => (missing, 0),
    };
    if align == '=' {
        out.push_str(lead);
        out.extend(std::iter::repeat_n(fill, missing));
        out.push_str(body);
        return;
    }
    out.extend(std::iter::repeat_n(fill, left));
    out.push_str(lead);
    out.push_str(body);
    out.extend(std::iter::repeat_n(fill, right));
}

const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
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

/// `datetime.strftime` in the C locale, for an aware UTC datetime.
fn strftime(t: Timestamp, spec: &str, out: &mut String) -> Result<(), String> {
    let dt = t.to_zoned(jiff::tz::TimeZone::UTC);
    let weekday = dt.weekday().to_monday_zero_offset() as usize;
    let month = dt.month() as usize - 1;
    let hour12 = match dt.hour() % 12 {
        0 => 12,
        h => h,
    };
    let mut chars = spec.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(d) = chars.next() else {
            out.push('%');
            break;
        };
        let _ = match d {
            'Y' => write!(out, "{}", dt.year()),
            'y' => write!(out, "{:02}", dt.year().rem_euclid(100)),
            'm' => write!(out, "{:02}", dt.month()),
            'd' => write!(out, "{:02}", dt.day()),
            'e' => write!(out, "{:2}", dt.day()),
            'H' => write!(out, "{:02}", dt.hour()),
            'k' => write!(out, "{:2}", dt.hour()),
            'I' => write!(out, "{hour12:02}"),
            'l' => write!(out, "{hour12:2}"),
            'M' => write!(out, "{:02}", dt.minute()),
            'S' => write!(out, "{:02}", dt.second()),
            'f' => write!(out, "{:06}", dt.subsec_nanosecond() / 1000),
            'p' => write!(out, "{}", if dt.hour() < 12 { "AM" } else { "PM" }),
            'a' => write!(out, "{}", &DAYS[weekday][..3]),
            'A' => write!(out, "{}", DAYS[weekday]),
            'b' | 'h' => write!(out, "{}", &MONTHS[month][..3]),
            'B' => write!(out, "{}", MONTHS[month]),
            'j' => write!(out, "{:03}", dt.day_of_year()),
            'u' => write!(out, "{}", weekday + 1),
            'w' => write!(out, "{}", (weekday + 1) % 7),
            'z' => write!(out, "+0000"),
            'Z' => write!(out, "UTC"),
            's' => write!(out, "{}", t.as_second()),
            'F' => write!(out, "{:04}-{:02}-{:02}", dt.year(), dt.month(), dt.day()),
            'T' => write!(
                out,
                "{:02}:{:02}:{:02}",
                dt.hour(),
                dt.minute(),
                dt.second()
            ),
            'R' => write!(out, "{:02}:{:02}", dt.hour(), dt.minute()),
            'D' | 'x' => write!(
                out,
                "{:02}/{:02}/{:02}",
                dt.month(),
                dt.day(),
                dt.year().rem_euclid(100)
            ),
            'X' => write!(
                out,
                "{:02}:{:02}:{:02}",
                dt.hour(),
                dt.minute(),
                dt.second()
            ),
            'c' => write!(
                out,
                "{} {} {:2} {:02}:{:02}:{:02} {}",
                &DAYS[weekday][..3],
                &MONTHS[month][..3],
                dt.day(),
                dt.hour(),
                dt.minute(),
                dt.second(),
                dt.year()
            ),
            'n' => writeln!(out),
            't' => write!(out, "\t"),
            '%' => write!(out, "%"),
            other => return Err(format!("unsupported strftime directive %{other}")),
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(spec: &str, v: Value) -> Result<String, String> {
        let mut out = String::new();
        format_value(&v, spec, &mut out).map(|_| out)
    }

    #[test]
    fn float_repr_matches_python() {
        for (v, want) in [
            (1e-05, "1e-05"),
            (100.0, "100.0"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (0.1 + 0.2, "0.30000000000000004"),
            (-0.0, "-0.0"),
            (1.5e300, "1.5e+300"),
            (42000.0, "42000.0"),
            // Ties between two shortest texts go to the even digit, as in Python.
            (2062116443042876.0 + 0.25, "2062116443042876.2"),
            (-1422436158523252.0 - 0.25, "-1422436158523252.2"),
            (1900721825113939.0 + 0.25, "1900721825113939.2"),
        ] {
            assert_eq!(float_repr(v), want, "{v}");
        }
    }

    #[test]
    fn common_freqtrade_specs() {
        assert_eq!(f(".2%", Value::Float(0.0287)).unwrap(), "2.87%");
        assert_eq!(f(".8f", Value::Float(42000.5)).unwrap(), "42000.50000000");
        assert_eq!(
            f(",.4f", Value::Float(1234567.891)).unwrap(),
            "1,234,567.8910"
        );
        assert_eq!(f("8f", Value::Float(0.5)).unwrap(), "0.500000");
        assert_eq!(f("010,", Value::Int(1234)).unwrap(), "00,001,234");
        assert_eq!(f("+.3e", Value::Float(12345.0)).unwrap(), "+1.234e+04");
        assert_eq!(f(".3g", Value::Float(0.00001234)).unwrap(), "1.23e-05");
        assert_eq!(f("^9", Value::Str("long".into())).unwrap(), "  long   ");
        assert_eq!(f(">5", Value::Bool(true)).unwrap(), "    1");
        assert!(f(".2f", Value::None).is_err());
        assert!(f("d", Value::Float(1.0)).is_err());
    }

    #[test]
    fn datetimes_take_strftime_specs() {
        let t: Timestamp = "2024-01-15T08:00:00.5Z".parse().unwrap();
        assert_eq!(
            f("%Y-%m-%d %H:%M", Value::DateTime(t)).unwrap(),
            "2024-01-15 08:00"
        );
        assert_eq!(
            str_of(&Value::DateTime(t)),
            "2024-01-15 08:00:00.500000+00:00"
        );
    }

    #[test]
    fn conversions_escape_as_python_does() {
        let ctx = |name: &str| {
            Some(Value::Str(match name {
                "a" => "é\n'x".into(),
                "b" => "é€😀".into(),
                _ => "a\u{200b}b".into(),
            }))
        };
        assert_eq!(format("{a!r}", &ctx).unwrap(), r#""é\n'x""#);
        assert_eq!(format("{b!a}", &ctx).unwrap(), r"'\xe9\u20ac\U0001f600'");
        assert_eq!(format("{c!r}", &ctx).unwrap(), r"'a\u200bb'");
    }

    #[test]
    fn template_errors_are_reported() {
        let ctx = |_: &str| None;
        assert!(matches!(format("{", &ctx), Err(FormatError::Template(_))));
        assert!(matches!(format("}", &ctx), Err(FormatError::Template(_))));
        assert_eq!(format("{{}}", &ctx).unwrap(), "{}");
        assert!(matches!(format("{}", &ctx), Err(FormatError::Template(_))));
    }

    #[test]
    fn fields_nest_in_specs_two_levels_deep_as_in_python_and_no_deeper() {
        let ctx = |name: &str| match name {
            "w" => Some(Value::Int(6)),
            "a" => Some(Value::Str(">".into())),
            _ => Some(Value::Float(1.5)),
        };
        assert_eq!(format("{x:{w}}", &ctx).unwrap(), "   1.5");
        assert_eq!(
            format("{x:{a:{w}}}", &ctx).unwrap_err().to_string(),
            "Max string recursion exceeded"
        );
        // Thousands of levels are refused as quickly, without exhausting the stack.
        let deep = format!("{}{{w}}{}", "{a:".repeat(5_000), "}".repeat(5_000));
        assert_eq!(
            format(&deep, &ctx).unwrap_err().to_string(),
            "Max string recursion exceeded"
        );
    }

    #[test]
    fn the_rendered_text_is_capped_and_the_cap_is_shared_by_one_budget() {
        let ctx = |_: &str| Some(Value::Str("x".into()));
        let wide = "{x:>10000}".repeat(MAX_OUTPUT / 10_000 + 1);
        assert_eq!(
            format(&wide, &ctx),
            Err(FormatError::TooLong { limit: MAX_OUTPUT })
        );
        let fits = "{x:>10000}".repeat(MAX_OUTPUT / 10_000);
        let mut budget = MAX_OUTPUT;
        let plain = |t: &str, o: &mut String| o.push_str(t);
        let once = format_within(&fits, &ctx, &plain, &mut budget).unwrap();
        assert_eq!(once.len(), MAX_OUTPUT / 10_000 * 10_000);
        assert!(format_within(&fits, &ctx, &plain, &mut budget).is_err());
    }
}
