//! Fuzzing of segment definitions: arbitrary JSON built from the criteria
//! vocabulary, and valid definitions from `testdata/segments/` with a random
//! part replaced, go through parsing, validation, compilation and a preview
//! on a small base. None may panic; each must give a result or an error
//! that names where the problem is (never an internal error).
//!
//! Cases per strategy: `FUZZ_CASES` (default 2,000); the counts are printed.

use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestCaseError, TestRunner};
use serde_json::{Map, Value, json};

use super::common::{TestBase, at, new_base};
use super::reference::RefBase;
use segments::criteria::Definition;
use segments::jobs::segments::{check_definition, preview};

/// Keys of the criteria language and of definitions.
const KEYS: &[&str] = &[
    "all",
    "any",
    "not",
    "field",
    "op",
    "value",
    "behavior",
    "event",
    "where",
    "having",
    "within",
    "agg",
    "segment",
    "sql",
    "query",
    "import",
    "after",
    "before",
    "operation",
    "name",
    "id",
    "criteria",
    "description",
    "case_sensitive",
    "missing",
];

/// Values that mean something somewhere: fields, operators, events,
/// aggregates, durations, dates, segment ids, SQL fragments.
const WORDS: &[&str] = &[
    "city",
    "email",
    "score",
    "loyalty",
    "interests",
    "birth_date",
    "created_at",
    "optin",
    "amount",
    "url",
    "ts",
    "type",
    "operation_id",
    "contact_id",
    "nope",
    "eq",
    "neq",
    "in",
    "not_in",
    "lt",
    "lte",
    "gt",
    "gte",
    "between",
    "contains",
    "not_contains",
    "starts_with",
    "ends_with",
    "is_empty",
    "is_not_empty",
    "is_true",
    "is_false",
    "within_last",
    "more_than_ago",
    "anniversary_within",
    "contains_any",
    "contains_all",
    "contains_none",
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "first",
    "last",
    "email_open",
    "purchase",
    "web_visit",
    "30d",
    "0d",
    "-1d",
    "12h",
    "2w",
    "99999999999d",
    "2026-02-29",
    "2025-02-29",
    "2026-13-01",
    "all_contacts",
    "email_subscribers",
    "x",
    "../etc",
    "",
    "é",
    "NaN",
    "score > 1",
    "1 = 1; DROP TABLE contacts",
    "(((((",
    "city LIKE '%'",
    "SELECT contact_id FROM events",
    "COPY (SELECT 1) TO '/tmp/x'",
    "in_segment(contact_id, 'x')",
];

fn words() -> impl Strategy<Value = Value> {
    prop::sample::select(WORDS).prop_map(|s| json!(s))
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop_oneof![Just(0i64), Just(-1), Just(1), Just(100), any::<i64>()].prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        words(),
        words(),
        words(),
        ".{0,12}".prop_map(Value::String),
    ]
}

fn arbitrary_json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(6, 48, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..5).prop_map(|kv| {
                Value::Object(
                    kv.into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect::<Map<_, _>>(),
                )
            }),
        ]
    })
}

/// Criteria shaped by the grammar, with any vocabulary word or value in
/// each place: most pass parsing and reach validation or evaluation.
fn grammar_criteria() -> impl Strategy<Value = Value> {
    let condition = || {
        (words(), words(), leaf(), any::<bool>()).prop_map(|(f, op, v, with_value)| {
            let mut c = json!({"field": f, "op": op});
            if with_value {
                c["value"] = v;
            }
            c
        })
    };
    let behavior = (
        prop_oneof![
            words(),
            prop::collection::vec(words(), 0..3).prop_map(Value::Array)
        ],
        prop::option::of(prop_oneof![
            leaf(),
            (leaf(), leaf()).prop_map(|(a, b)| json!({"after": a, "before": b}))
        ]),
        prop::collection::vec(condition(), 0..3),
        prop::option::of((words(), words(), words(), leaf())),
    )
        .prop_map(|(event, within, wheres, having)| {
            let mut b = json!({"event": event});
            if let Some(w) = within {
                b["within"] = w;
            }
            if !wheres.is_empty() {
                b["where"] = Value::Array(wheres);
            }
            if let Some((agg, field, op, value)) = having {
                b["having"] = json!({"agg": agg, "field": field, "op": op, "value": value});
            }
            json!({"behavior": b})
        });
    let leaves = prop_oneof![
        3 => condition(),
        3 => behavior,
        1 => words().prop_map(|w| json!({"segment": w})),
        1 => words().prop_map(|w| json!({"sql": w})),
        1 => words().prop_map(|w| json!({"query": w})),
        1 => words().prop_map(|w| json!({"import": w})),
    ];
    leaves.prop_recursive(5, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|xs| json!({"all": xs})),
            prop::collection::vec(inner.clone(), 0..4).prop_map(|xs| json!({"any": xs})),
            inner.prop_map(|x| json!({"not": x})),
        ]
    })
}

/// The example definitions shipped in `testdata/segments/`.
fn examples() -> Vec<Value> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/segments");
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
        .collect()
}

/// JSON pointers of every node of a value.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Array(xs) => {
            for (i, x) in xs.iter().enumerate() {
                pointers(x, format!("{at}/{i}"), out);
            }
        }
        Value::Object(m) => {
            for (k, x) in m {
                pointers(
                    x,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        _ => {}
    }
    out.push(at);
}

fn base() -> TestBase {
    let tb = new_base("Europe/Paris");
    tb.import_contacts(
        "contacts",
        "contact_id,city,email,score,birth_date,created_at,optin,loyalty,interests\n\
         1,Paris,a@x.fr,3,1990-02-28,2025-01-01T10:00:00Z,true,gold,sport;vin\n\
         2,Lyon,,10,2000-02-29,,false,silver,\n\
         3,,b@y.com,,,2026-02-01T00:00:00Z,,,cuisine\n",
    )
    .unwrap();
    tb.import_events(
        "events",
        "contact_id,ts,type,operation_id,url,amount\n\
         1,2026-02-20T10:00:00Z,email_open,NL-1,,\n\
         1,2026-02-21T10:00:00Z,purchase,,,120.5\n\
         2,2026-01-05T10:00:00Z,web_visit,,/checkout,\n\
         3,2025-06-01T10:00:00Z,purchase,,,15\n",
    )
    .unwrap();
    tb
}

#[derive(Default)]
struct Counts {
    parse_errors: AtomicUsize,
    validation_errors: AtomicUsize,
    run_errors: AtomicUsize,
    computed: AtomicUsize,
    /// Computed without `sql` or `query`, and equal to the reference.
    checked: AtomicUsize,
}

/// Does a JSON path of an error (`criteria.all[2].behavior.where[0]`, `name`,
/// `$`) lead into the input? Its last step may be missing (a missing key is
/// named by its path).
fn path_in(input: &Value, path: &str) -> bool {
    if path == "$" {
        return true;
    }
    let mut steps: Vec<Result<&str, usize>> = Vec::new();
    for part in path.split('.') {
        let (key, rest) = part.split_once('[').unwrap_or((part, ""));
        if key.is_empty() {
            return false;
        }
        steps.push(Ok(key));
        for index in rest.split('[').filter(|i| !i.is_empty()) {
            match index.trim_end_matches(']').parse() {
                Ok(i) => steps.push(Err(i)),
                Err(_) => return false,
            }
        }
    }
    let mut at = input;
    for (n, step) in steps.iter().enumerate() {
        let next = match step {
            Ok(key) => at.get(*key),
            Err(i) => at.get(*i),
        };
        match next {
            Some(v) => at = v,
            None => return n + 1 == steps.len(),
        }
    }
    true
}

fn has_sql(c: &segments::criteria::Criterion) -> bool {
    let mut sql = false;
    c.visit(&mut |x| {
        sql |= matches!(
            x,
            segments::criteria::Criterion::Sql(_) | segments::criteria::Criterion::Query(_)
        )
    });
    sql
}

const AS_OF: &str = "2026-03-02T12:00:00Z";

/// Parse, validate and preview one input. A definition refused at parsing
/// or validation gets a criteria error whose JSON path leads into the
/// input; one that computes gives the reference evaluator's contacts (but
/// for `sql` and `query` criteria, which it does not evaluate); only those
/// may fail at run time, never with an internal error.
fn exercise(
    tb: &TestBase,
    r: &RefBase,
    rt: &tokio::runtime::Runtime,
    input: &Value,
    counts: &Counts,
) -> Result<(), TestCaseError> {
    let placed = |e: &segments::Error| -> Result<(), TestCaseError> {
        match e {
            segments::Error::Definition { path, .. } => {
                prop_assert!(
                    path_in(input, path),
                    "{input}: {e}: the path is not in the input"
                );
            }
            _ => prop_assert!(false, "{input}: not a criteria error: {e}"),
        }
        Ok(())
    };
    let def = match Definition::parse(input) {
        Ok(d) => d,
        Err(e) => {
            counts.parse_errors.fetch_add(1, Ordering::Relaxed);
            return placed(&e);
        }
    };
    let snap = tb.base.snapshot().unwrap();
    if let Err(e) = check_definition(&snap.manifest, &snap.base, &def) {
        counts.validation_errors.fetch_add(1, Ordering::Relaxed);
        return placed(&e);
    }
    let sql = has_sql(&def.criteria);
    match rt.block_on(preview(&snap, &def, at(AS_OF))) {
        Ok(p) => {
            counts.computed.fetch_add(1, Ordering::Relaxed);
            // The base has 3 contacts: the sample is every member.
            prop_assert_eq!(p.count as usize, p.sample.len(), "{}", input);
            if !sql {
                let mut want: Vec<u64> = r
                    .eval(&def.criteria_json, at(AS_OF))
                    .iter()
                    .map(|iid| r.contact(*iid).unwrap().contact_id)
                    .collect();
                want.sort_unstable();
                let mut got = p.sample.clone();
                got.sort_unstable();
                prop_assert_eq!(got, want, "{} differs from the reference", input);
                counts.checked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }
        Err(e) => {
            counts.run_errors.fetch_add(1, Ordering::Relaxed);
            prop_assert!(
                sql && !matches!(e, segments::Error::Internal(_)),
                "{input}: {e}"
            );
            Ok(())
        }
    }
}

/// `FUZZ_CASES` (at least the 2,000 the README promises).
fn cases() -> u32 {
    let n = std::env::var("FUZZ_CASES")
        .ok()
        .map(|v| v.parse().expect("FUZZ_CASES is a number"))
        .unwrap_or(2000);
    assert!(n >= 2000, "FUZZ_CASES={n}: at least 2,000 cases");
    n
}

fn report(what: &str, counts: &Counts) {
    let n = |a: &AtomicUsize| a.load(Ordering::Relaxed);
    println!(
        "fuzz ({what}): {} inputs: {} refused at parsing, {} at validation, {} at run time, {} computed ({} equal to the reference); no panic",
        n(&counts.parse_errors)
            + n(&counts.validation_errors)
            + n(&counts.run_errors)
            + n(&counts.computed),
        n(&counts.parse_errors),
        n(&counts.validation_errors),
        n(&counts.run_errors),
        n(&counts.computed),
        n(&counts.checked),
    );
}

/// Run `cases()` inputs of a strategy through [`exercise`] on a small base,
/// print the counts and return them.
fn fuzz(what: &str, strategy: impl Strategy<Value = Value>) -> Counts {
    let tb = base();
    let r = super::reference::load(tb.path());
    let rt = super::common::rt();
    let counts = Counts::default();
    let mut runner = TestRunner::new(PtConfig {
        cases: cases(),
        failure_persistence: None,
        ..PtConfig::default()
    });
    runner
        .run(&strategy, |input| exercise(&tb, &r, &rt, &input, &counts))
        .unwrap();
    report(what, &counts);
    counts
}

#[test]
fn arbitrary_json_definitions_give_a_result_or_a_clear_error() {
    let strategy = prop_oneof![
        arbitrary_json().prop_map(|c| json!({"name": "fuzz", "criteria": c})),
        arbitrary_json(),
    ];
    let counts = fuzz("arbitrary JSON", strategy);
    assert!(counts.parse_errors.load(Ordering::Relaxed) > 0);
}

#[test]
fn grammar_shaped_definitions_give_a_result_or_a_clear_error() {
    let strategy = grammar_criteria().prop_map(|c| json!({"name": "fuzz", "criteria": c}));
    let counts = fuzz("grammar-shaped criteria", strategy);
    assert!(counts.validation_errors.load(Ordering::Relaxed) > 0);
    assert!(counts.checked.load(Ordering::Relaxed) >= 100);
}

#[test]
fn mutated_example_definitions_give_a_result_or_a_clear_error() {
    let examples = examples();
    assert!(examples.len() >= 10, "the examples of testdata/segments");
    let strategy = (
        0..examples.len(),
        any::<prop::sample::Index>(),
        prop_oneof![leaf(), arbitrary_json()],
    )
        .prop_map(move |(i, at, replacement)| {
            let mut def = examples[i].clone();
            let mut ps = Vec::new();
            pointers(&def, String::new(), &mut ps);
            let p = ps[at.index(ps.len())].clone();
            match def.pointer_mut(&p) {
                Some(node) => *node = replacement,
                None => unreachable!("a pointer of the value"),
            }
            def
        });
    let counts = fuzz("mutated examples", strategy);
    // The mutations reach every stage.
    assert!(counts.validation_errors.load(Ordering::Relaxed) > 0);
    assert!(counts.checked.load(Ordering::Relaxed) >= 100);
}
