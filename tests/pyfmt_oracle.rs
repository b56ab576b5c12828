//! The template engine against CPython: every generated value and format spec must render
//! exactly as Python's `format(value, spec)` does, or fail where Python raises.

use std::io::Write;
use std::process::{Command, Stdio};

use proptest::prelude::*;
use tradehook::render::pyfmt::{self, Value};

/// Reads `{"kind": …, "v": …, "spec": …}` lines and answers `{"ok": text}` or `{"err": type}`.
const ORACLE: &str = r#"
import sys, json, datetime
out = []
for line in sys.stdin:
    case = json.loads(line)
    kind, v = case["kind"], case["v"]
    if kind == "float":
        v = float.fromhex(v)
    elif kind == "int":
        v = int(v)
    elif kind == "dt":
        v = datetime.datetime.fromisoformat(v)
    try:
        out.append({"ok": format(v, case["spec"])})
    except Exception as e:
        out.append({"err": type(e).__name__ + ": " + str(e)})
json.dump(out, sys.stdout)
"#;

#[derive(Debug, Clone)]
struct Case {
    value: Value,
    spec: String,
}

fn python_format(cases: &[Case]) -> Vec<serde_json::Value> {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(ORACLE)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 must be installed: it is the reference for str.format");
    let mut input = String::new();
    for c in cases {
        let (kind, v) = match &c.value {
            Value::None => ("none", serde_json::Value::Null),
            Value::Bool(b) => ("bool", (*b).into()),
            Value::Int(i) => ("int", i.to_string().into()),
            Value::Float(f) => ("float", hex_float(*f).into()),
            Value::Str(s) => ("str", s.clone().into()),
            Value::DateTime(t) => (
                "dt",
                t.strftime("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string().into(),
            ),
            _ => unreachable!(),
        };
        input.push_str(&serde_json::json!({"kind": kind, "v": v, "spec": c.spec}).to_string());
        input.push('\n');
    }
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "the oracle failed");
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Python's `float.hex` form, so that the exact value crosses over.
fn hex_float(f: f64) -> String {
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0x0p+0"
        } else {
            "0x0p+0"
        }
        .into();
    }
    let bits = f.to_bits();
    let sign = if bits >> 63 == 1 { "-" } else { "" };
    let exp = ((bits >> 52) & 0x7ff) as i64;
    let frac = bits & ((1 << 52) - 1);
    if exp == 0 {
        format!("{sign}0x0.{frac:013x}p-1022")
    } else {
        format!("{sign}0x1.{frac:013x}p{}", exp - 1023)
    }
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::None),
        any::<bool>().prop_map(Value::Bool),
        (-1_000_000_000i128..1_000_000_000).prop_map(Value::Int),
        any::<i64>().prop_map(|i| Value::Int(i as i128)),
        // Prices, amounts and ratios as they occur, and exact ties such as 0.125 and 2.5.
        (-1e7f64..1e7).prop_map(Value::Float),
        (-1.0f64..1.0).prop_map(Value::Float),
        (-2000i64..2000, 0u32..6).prop_map(|(n, k)| Value::Float(n as f64 / 8f64.powi(k as i32))),
        (1u32..9, -30i32..30).prop_map(|(d, e)| Value::Float(d as f64 * 10f64.powi(e))),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::Float),
        Just(Value::Float(-0.0)),
        "[a-zA-Z/ 0-9€é]{0,12}".prop_map(Value::Str),
        (0i64..4_102_444_800, 0i32..1_000_000)
            .prop_map(|(s, us)| Value::DateTime(jiff::Timestamp::new(s, us * 1000).unwrap())),
    ]
}

fn spec() -> impl Strategy<Value = String> {
    let fill_align = prop_oneof![
        Just(String::new()),
        prop::sample::select(vec!["<", ">", "^", "="]).prop_map(String::from),
        (
            prop::sample::select(vec![" ", "*", "0", "x", "€", "-"]),
            prop::sample::select(vec!["<", ">", "^", "="])
        )
            .prop_map(|(f, a)| format!("{f}{a}")),
    ];
    let sign = prop::sample::select(vec!["", "", "+", "-", " "]);
    let z = prop::sample::select(vec!["", "", "", "z"]);
    let alt = prop::sample::select(vec!["", "", "#"]);
    let zero = prop::sample::select(vec!["", "", "0"]);
    let width = prop_oneof![
        Just(String::new()),
        (1usize..25).prop_map(|w| w.to_string())
    ];
    let grouping = prop::sample::select(vec!["", "", "", ",", "_"]);
    let precision = prop_oneof![
        Just(String::new()),
        (0usize..20).prop_map(|p| format!(".{p}"))
    ];
    let kind = prop::sample::select(vec![
        "", "", "s", "d", "n", "b", "o", "x", "X", "c", "e", "E", "f", "F", "g", "G", "%",
    ]);
    (
        fill_align, sign, z, alt, zero, width, grouping, precision, kind,
    )
        .prop_map(|(fa, s, z, a, zero, w, g, p, k)| format!("{fa}{s}{z}{a}{zero}{w}{g}{p}{k}"))
}

fn strftime_spec() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![
            "%Y", "%m", "%d", "%H", "%M", "%S", "%f", "%y", "%b", "%B", "%a", "%A", "%j", "%p",
            "%I", "%z", "%Z", "%%", "%e", "%F", "%T", "%c", "%x", "%X", "-", " ", ":", "T", "at ",
        ]),
        1..6,
    )
    .prop_map(|parts| parts.concat())
}

fn check(cases: Vec<Case>) -> Result<(), TestCaseError> {
    let expected = python_format(&cases);
    for (case, want) in cases.iter().zip(expected) {
        let template = format!("{{v:{}}}", case.spec);
        let value = case.value.clone();
        let got = pyfmt::format(&template, &|_| Some(value.clone()));
        match (want.get("ok").and_then(|v| v.as_str()), got) {
            (Some(w), Ok(g)) => {
                prop_assert_eq!(w, g.as_str(), "format({:?}, {:?})", case.value, case.spec)
            }
            (None, Err(_)) => {}
            (Some(w), Err(e)) => {
                prop_assert!(
                    false,
                    "format({:?}, {:?}): Python gave {w:?}, we failed: {e}",
                    case.value,
                    case.spec
                )
            }
            (None, Ok(g)) => prop_assert!(
                false,
                "format({:?}, {:?}): Python raised {}, we gave {g:?}",
                case.value,
                case.spec,
                want["err"]
            ),
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn values_format_as_python_formats_them(
        cases in prop::collection::vec((value(), spec()), 300)
    ) {
        check(cases.into_iter().map(|(value, spec)| Case { value, spec }).collect())?;
    }

    #[test]
    fn datetimes_format_as_python_strftime(
        cases in prop::collection::vec((value(), strftime_spec()), 100)
    ) {
        let cases = cases
            .into_iter()
            .filter(|(v, _)| matches!(v, Value::DateTime(_)))
            .map(|(value, spec)| Case { value, spec })
            .collect();
        check(cases)?;
    }
}

#[test]
fn default_float_text_is_python_repr() {
    let values: Vec<Case> = [
        1e-05,
        100.0,
        0.1,
        1e16,
        1e15,
        123456789.123,
        5e-324,
        1.7976931348623157e308,
    ]
    .into_iter()
    .map(|f| Case {
        value: Value::Float(f),
        spec: String::new(),
    })
    .collect();
    check(values).unwrap();
}
