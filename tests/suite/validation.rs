//! Validation errors point at the criterion with a JSON path.

use serde_json::json;

use super::common::new_base;
use segments::criteria::Definition;
use segments::jobs::segments::check_definition;

fn err_of(def: serde_json::Value) -> String {
    let tb = new_base("UTC");
    tb.import_contacts("imp", "contact_id,city,score,loyalty\n1,Paris,3,gold\n")
        .unwrap();
    let snap = tb.base.snapshot().unwrap();
    match Definition::parse(&def) {
        Err(e) => e.to_string(),
        Ok(d) => check_definition(&snap.manifest, &snap.base, &d)
            .map(|_| "ok".to_string())
            .unwrap_or_else(|e| e.to_string()),
    }
}

#[test]
fn each_kind_of_mistake_names_its_json_path() {
    let cases = [
        (
            json!({"name": "x", "criteria": {"all": [{"field": "city", "op": "eq", "value": "a"}, {"any": [{"field": "nope", "op": "eq", "value": 1}]}]}}),
            "criteria.all[1].any[0].field",
            "unknown contact field",
        ),
        (
            json!({"name": "x", "criteria": {"all": [{"field": "score", "op": "starts_with", "value": "a"}]}}),
            "criteria.all[0].op",
            "does not apply",
        ),
        (
            json!({"name": "x", "criteria": {"all": [{"field": "score", "op": "gt", "value": "a"}]}}),
            "criteria.all[0].value",
            "expects a number",
        ),
        (
            json!({"name": "x", "criteria": {"any": [{"segment": "ghost"}]}}),
            "criteria.any[0].segment",
            "unknown segment",
        ),
        (
            json!({"name": "x", "criteria": {"not": {"import": "ghost"}}}),
            "criteria.not.import",
            "unknown import",
        ),
        (
            json!({"name": "x", "criteria": {"field": "loyalty", "op": "eq", "value": "Gold"}}),
            "criteria.value",
            "allowed values",
        ),
        (
            json!({"name": "x", "criteria": {"behavior": {"event": "purchase", "having": {"agg": "median", "op": "gt", "value": 1}}}}),
            "criteria.behavior.having.agg",
            "unknown aggregate",
        ),
        (
            json!({"name": "x", "criteria": {"behavior": {"event": "purchase", "within": "3y"}}}),
            "criteria.behavior.within",
            "not a duration",
        ),
        (
            json!({"name": "x", "criteria": {"behavior": {"event": "purchase", "where": [{"field": "nope", "op": "eq", "value": 1}]}}}),
            "criteria.behavior.where[0].field",
            "unknown event column",
        ),
        (
            json!({"name": "x", "criteria": {"field": "city", "op": "eq", "value": "a", "segment": "b"}}),
            "criteria",
            "exactly one kind",
        ),
        (
            json!({"name": "x", "criteria": {"all": {"field": "city"}}}),
            "criteria.all",
            "array",
        ),
        (
            json!({"name": "x", "id": "Bad Id", "criteria": {"all": []}}),
            "id",
            "invalid id",
        ),
    ];
    for (def, path, message) in cases {
        let e = err_of(def.clone());
        assert!(
            e.starts_with(&format!("{path}:")),
            "{def}: expected path {path}, got {e}"
        );
        assert!(e.contains(message), "{def}: expected {message:?} in {e}");
    }
}

#[test]
fn a_cycle_of_three_segments_is_refused_and_named() {
    let tb = new_base("UTC");
    tb.import_contacts("imp", "contact_id,city\n1,Paris\n")
        .unwrap();
    let rt = super::common::rt();
    let mk = |id: &str, refers: &str| {
        Definition::parse(&json!({"id": id, "name": id, "criteria": {"segment": refers}})).unwrap()
    };
    let mut w = tb.base.writer("t").unwrap();
    rt.block_on(segments::jobs::segments::create(
        &mut w,
        &mk("a", "all_contacts"),
        chrono::Utc::now(),
    ))
    .unwrap();
    rt.block_on(segments::jobs::segments::create(
        &mut w,
        &mk("b", "a"),
        chrono::Utc::now(),
    ))
    .unwrap();
    rt.block_on(segments::jobs::segments::create(
        &mut w,
        &mk("c", "b"),
        chrono::Utc::now(),
    ))
    .unwrap();
    let err = rt
        .block_on(segments::jobs::segments::edit(
            &mut w,
            "a",
            &mk("a", "c"),
            chrono::Utc::now(),
        ))
        .unwrap_err()
        .to_string();
    assert!(err.contains("reference cycle: a → c → b → a"), "{err}");
}

#[test]
fn hostile_definitions_get_clear_errors() {
    let mut deep = json!({"all": []});
    for _ in 0..1000 {
        deep = json!({"not": deep});
    }
    let e = err_of(json!({"name": "x", "criteria": deep}));
    assert!(e.contains("nested deeper"), "{e}");
    let many: Vec<_> = (0..100_000)
        .map(|_| json!({"field": "city", "op": "is_empty"}))
        .collect();
    let e = err_of(json!({"name": "x", "criteria": {"any": many}}));
    assert!(e.contains("more than"), "{e}");
    // A duration whose last character is not ASCII (found by the fuzz test).
    for within in ["3é", "é", "30日", ""] {
        let e = err_of(
            json!({"name": "x", "criteria": {"behavior": {"event": "purchase", "within": within}}}),
        );
        assert!(e.contains("is not a duration"), "{within:?}: {e}");
    }
}

#[test]
fn hostile_ids_names_and_values_are_refused_or_kept_literal() {
    for id in ["../etc", "a/b", "A", "x'y", "x\"y", "a b", "", "é"] {
        let e = Definition::parse(&json!({"id": id, "name": "x", "criteria": {"all": []}}))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("id:"), "{id:?}: {e}");
    }
    for name in ["a\u{0}b", "line\nbreak", &"n".repeat(10_000), "   "] {
        let e = Definition::parse(&json!({"name": name, "criteria": {"all": []}}))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("name:"), "{name:?}: {e}");
    }
    // Names are text: an SQL fragment or a path in a name becomes a safe slug id.
    let d = Definition::parse(
        &json!({"name": "x'; DROP TABLE contacts; -- ../../etc", "criteria": {"all": []}}),
    )
    .unwrap();
    assert_eq!(d.id, "x-drop-table-contacts-etc");
    // Values are literals in plans, never SQL text.
    let tb = new_base("UTC");
    tb.import_contacts(
        "imp",
        "contact_id,city\n1,\"O'Brien'); DROP TABLE contacts; --\"\n2,Paris\n",
    )
    .unwrap();
    let as_of = chrono::Utc::now();
    let hit = tb
        .eval(
            &json!({"field": "city", "op": "eq", "value": "O'Brien'); DROP TABLE contacts; --"}),
            as_of,
        )
        .unwrap();
    assert_eq!(hit, vec![1]);
    assert_eq!(
        tb.eval(
            &json!({"field": "city", "op": "contains", "value": "%"}),
            as_of
        )
        .unwrap(),
        Vec::<u64>::new()
    );
    assert_eq!(
        tb.eval(
            &json!({"field": "city", "op": "starts_with", "value": "_aris"}),
            as_of
        )
        .unwrap(),
        Vec::<u64>::new()
    );
    assert_eq!(tb.eval(&json!({"all": []}), as_of).unwrap(), vec![1, 2]);
}
