//! Request validation and the pure helpers. The JSON endpoints' parsers are fuzzed here with
//! proptest (arbitrary bytes and arbitrary JSON values): they must answer Ok or a 400-class
//! error, never panic. `bin/tests/api.rs` sends the same kinds of input to a real grid.

use proptest::prelude::*;

use super::*;

fn reason(json: &str) -> Result<ReasonPlan, ApiError> {
    parse_json::<ReasonRequest>(json.as_bytes())?.plan()
}

#[test]
fn reason_defaults_follow_the_limits() {
    let p = reason(r#"{"start": "Paris", "end": "Eiffel_Tower"}"#).unwrap();
    assert_eq!(p.bounds.max_depth, limits::REASON_DEPTH_DEFAULT);
    assert_eq!(p.bounds.max_paths, limits::REASON_PATHS_DEFAULT);
    assert_eq!(p.filter.direction, Direction::Both);
    assert_eq!(p.consistency, Consistency::Strong);
    assert_eq!(p.mode, Mode::Shortest);
    assert_eq!(p.start, ConceptId::from_label("paris"));
    assert_eq!(p.end, ConceptId::from_label("eiffel tower"));
}

#[test]
fn reason_accepts_ids_and_names_each_bad_field() {
    let id = ConceptId::from_label("Paris");
    let p = reason(&format!(r#"{{"start": "{id}", "end": "France", "mode": "confident"}}"#)).unwrap();
    assert_eq!(p.start, id);
    assert_eq!(p.mode, Mode::Confident);
    let cases = [
        (r#"{"start": "a", "end": "b", "max_depth": 11}"#, "max_depth"),
        (r#"{"start": "a", "end": "b", "max_depth": 0}"#, "max_depth"),
        (r#"{"start": "a", "end": "b", "max_paths": 33}"#, "max_paths"),
        (r#"{"start": "a", "end": "b", "mode": "fastest"}"#, "mode"),
        (r#"{"start": "a", "end": "b", "direction": "sideways"}"#, "direction"),
        (r#"{"start": "a", "end": "b", "kinds": ["causal", "magic"]}"#, "kinds"),
        (r#"{"start": "a", "end": "b", "min_confidence": 1.5}"#, "min_confidence"),
        (r#"{"start": "a", "end": "b", "consistency": "maybe"}"#, "consistency"),
        (r#"{"start": " _ ", "end": "b"}"#, "start"),
    ];
    for (json, field) in cases {
        let e = reason(json).unwrap_err();
        assert_eq!(e.status, 400, "{json}");
        assert!(e.message.starts_with(field), "{json}: {}", e.message);
    }
    // serde names unknown and mistyped fields itself.
    let e = reason(r#"{"start": "a", "end": "b", "max_dept": 3}"#).unwrap_err();
    assert!(e.message.contains("max_dept"), "{}", e.message);
    let e = reason(r#"{"start": "a", "end": "b", "max_depth": "three"}"#).unwrap_err();
    assert!(e.message.starts_with("max_depth: invalid type"), "{}", e.message);
    let e = parse_json::<LearnRequest>(br#"{"associations": [{"source": "a", "target": 5, "relation": "r"}]}"#)
        .unwrap_err();
    assert!(e.message.starts_with("associations[0].target: invalid type"), "{}", e.message);
    let e = reason("{not json").unwrap_err();
    assert_eq!(e.status, 400);
}

#[test]
fn neighbor_filters_parse_lists_and_reject_bad_values() {
    let q = NeighborsQuery {
        kind: Some("causal, semantic".into()),
        relation: Some("capital_of,,located_in".into()),
        direction: Some("in".into()),
        limit: Some(3),
        ..Default::default()
    };
    let (f, limit, c) = q.filter().unwrap();
    assert_eq!(f.kinds, vec![AssocKind::Causal, AssocKind::Semantic]);
    assert_eq!(f.relations, vec!["capital_of".to_string(), "located_in".to_string()]);
    assert_eq!(f.direction, Direction::In);
    assert_eq!((limit, c), (3, Consistency::Strong));
    for (q, field) in [
        (NeighborsQuery { limit: Some(0), ..Default::default() }, "limit"),
        (NeighborsQuery { kind: Some("x".into()), ..Default::default() }, "kind"),
        (NeighborsQuery { min_confidence: Some(-0.1), ..Default::default() }, "min_confidence"),
        (NeighborsQuery { direction: Some("up".into()), ..Default::default() }, "direction"),
    ] {
        let e = q.filter().unwrap_err();
        assert!(e.message.starts_with(field), "{}", e.message);
    }
}

#[test]
fn noisy_or_combines_independent_supports() {
    assert_eq!(noisy_or([]), 0.0);
    assert!((noisy_or([0.5]) - 0.5).abs() < 1e-12);
    assert!((noisy_or([0.5, 0.5]) - 0.75).abs() < 1e-12);
    assert!((noisy_or([0.9, 0.2, 0.0]) - 0.92).abs() < 1e-12);
    assert_eq!(noisy_or([1.0, 0.3]), 1.0);
}

#[test]
fn explanations_state_each_fact_in_its_stored_direction() {
    let c = |l: &str| ConceptRef { id: String::new(), label: l.into() };
    let e = |rel: &str, dir: &str| EdgeOut {
        kind: "semantic".into(),
        relation: rel.into(),
        confidence: 0.9,
        direction: dir.into(),
        all: Vec::new(),
    };
    let p = PathOut {
        concepts: vec![c("Eiffel Tower"), c("Paris"), c("France")],
        edges: vec![e("located_in", "forward"), e("has_capital", "backward")],
        hops: 2,
        confidence: 0.81,
    };
    assert_eq!(
        explain(&p),
        "Eiffel Tower connects to France in 2 hops (confidence 0.810): \
         Eiffel Tower located in Paris; France has capital Paris."
    );
    // A hop joined by several edges names the others.
    let mut p = p;
    p.edges[0].all = vec![e("located_in", "forward"), e("contains", "backward")];
    assert!(
        explain(&p).contains("Eiffel Tower located in Paris (also: Paris contains Eiffel Tower); "),
        "{}",
        explain(&p)
    );
}

#[test]
fn errors_serialise_as_the_documented_body() {
    let e = ApiError::bad_request("max_depth", "must be 1 to 10");
    assert_eq!(
        e.body(),
        serde_json::json!({"error": {"code": "bad_request", "message": "max_depth: must be 1 to 10"}})
    );
    let b: ApiError = PathError::Budget { visited: 9, limit: 8, stats: Stats::default() }.into();
    assert_eq!((b.status, b.code), (422, "budget_exceeded"));
    assert_eq!(b.body()["error"]["details"]["visited"], 0);
}

#[test]
fn learning_text_extracts_triples_and_keeps_unmatched_sentences() {
    let req = LearnRequest {
        content: Some("Paris is the capital of France. Smoking causes cancer. Is it raining?".into()),
        ..Default::default()
    };
    let p = req.plan(16).unwrap();
    assert_eq!(p.triples.len(), 2);
    assert_eq!((p.triples[0].relation.as_str(), p.triples[1].kind.as_str()), ("capital_of", "causal"));
    assert_eq!(p.unmatched, vec!["Is it raining?".to_string()]);
    // Paris, France, Smoking, cancer and the question, each embedded at the grid's width.
    assert_eq!(p.batch.concepts.len(), 5);
    assert!(p.batch.concepts.iter().all(|c| c.vector.len() == 16));
    assert_eq!(p.batch.associations.len(), 2);
    assert_eq!(p.batch.associations[0].evidence, "Paris is the capital of France.");
}

#[test]
fn structured_ends_get_no_vector_and_can_be_left_uncreated() {
    let a = |s: &str, t: &str| AssociationIn {
        source: s.into(),
        target: t.into(),
        relation: "r".into(),
        ..Default::default()
    };
    let req = LearnRequest {
        concepts: vec![ConceptIn { label: "A".into(), content: "first".into(), ..Default::default() }],
        associations: vec![a("A", "B")],
        ..Default::default()
    };
    let p = req.plan(8).unwrap();
    assert_eq!(p.batch.concepts.len(), 2);
    assert_eq!(p.batch.concepts[0].vector.len(), 8);
    assert!(p.batch.concepts[1].vector.is_empty(), "naming B must not overwrite its vector");
    let p = LearnRequest { create_concepts: Some(false), ..req.clone() }.plan(8).unwrap();
    assert_eq!(p.batch.concepts.len(), 1);
    assert_eq!(p.batch.associations[0].target, ConceptId::from_label("b"));
    // Ends given as ids are used as they are.
    let id = ConceptId::from_label("Z");
    let p = LearnRequest { associations: vec![a("A", &id.to_string())], ..Default::default() }.plan(8).unwrap();
    assert_eq!((p.batch.associations[0].target, p.batch.concepts.len()), (id, 1));
}

#[test]
fn learning_rejects_bad_items_by_field() {
    let cases = [
        (r#"{}"#, "content"),
        (r#"{"concepts": [{"label": "  "}]}"#, "concepts[0].label"),
        (r#"{"concepts": [{"label": "a", "confidence": -1}]}"#, "concepts[0].confidence"),
        (
            r#"{"associations": [{"source": "a", "target": "b", "relation": "r", "kind": "odd"}]}"#,
            "associations[0].kind",
        ),
        (r#"{"associations": [{"source": "_", "target": "b", "relation": "r"}]}"#, "associations[0].source"),
        (r#"{"concepts": [{"label": "a", "vector": [1.0]}]}"#, "batch rejected"),
    ];
    for (json, field) in cases {
        let e = parse_json::<LearnRequest>(json.as_bytes()).unwrap().plan(8).unwrap_err();
        assert_eq!(e.status, 400, "{json}");
        assert!(e.message.contains(field), "{json}: {}", e.message);
    }
    let many = "A is a B. ".repeat(limits::LEARN_SENTENCES_MAX + 1);
    let e = LearnRequest { content: Some(many), ..Default::default() }.plan(8).unwrap_err();
    assert_eq!(e.status, 413);
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        "[ -~]{0,12}".prop_map(serde_json::Value::from),
        prop::sample::select(vec!["Paris", "shortest", "confident", "out", "both", "causal", "eventual", ""])
            .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "start",
                    "end",
                    "max_depth",
                    "max_paths",
                    "mode",
                    "kinds",
                    "relations",
                    "direction",
                    "min_confidence",
                    "consistency",
                    "content",
                    "concepts",
                    "associations",
                    "label",
                    "source",
                    "target",
                    "relation",
                    "kind",
                    "text",
                    "vector",
                    "k",
                    "other",
                ])
                .prop_map(String::from),
                inner,
                0..8,
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    /// Fuzz target: arbitrary bytes into every JSON request type. Parsing and planning must
    /// never panic; a failure is always a 400 with a message.
    #[test]
    fn arbitrary_bytes_never_panic_the_parsers(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        match parse_json::<ReasonRequest>(&bytes) {
            Ok(r) => {
                if let Err(e) = r.plan() {
                    prop_assert_eq!(e.status, 400);
                }
            }
            Err(e) => prop_assert_eq!(e.status, 400),
        }
        if let Ok(r) = parse_json::<LearnRequest>(&bytes) {
            if let Err(e) = r.plan(8) {
                prop_assert!(e.status == 400 || e.status == 413);
            }
        }
        let _ = parse_json::<SearchRequest>(&bytes);
    }

    /// Fuzz target: arbitrary text (any Unicode, long sentences, odd punctuation) through the
    /// extractor, label cutting, embedding and validation of `/learn`.
    #[test]
    fn arbitrary_text_never_panics_learning(text in "\\PC{0,400}", long in "[a-zé ]{200,300}") {
        for content in [text.clone(), format!("{long} is a {text}."), format!("{text}. {long}")] {
            let req = LearnRequest { content: Some(content), ..Default::default() };
            match req.plan(8) {
                // A plan is only ever a batch the shards will accept.
                Ok(p) => prop_assert!(model::validate_batch(&p.batch, 8).is_ok()),
                Err(e) => prop_assert!(e.status == 400 || e.status == 413, "{}", e),
            }
        }
    }

    /// Fuzz target: structurally plausible JSON (the field names the API knows, values of
    /// every type) into every request type and its validation.
    #[test]
    fn arbitrary_json_never_panics_validation(v in arb_json()) {
        if let Ok(r) = serde_json::from_value::<ReasonRequest>(v.clone()) {
            if let Err(e) = r.plan() {
                prop_assert_eq!(e.status, 400);
                prop_assert!(!e.message.is_empty());
            }
        }
        if let Ok(q) = serde_json::from_value::<NeighborsQuery>(v.clone()) {
            if let Err(e) = q.filter() {
                prop_assert_eq!(e.status, 400);
            }
        }
        if let Ok(r) = serde_json::from_value::<LearnRequest>(v.clone()) {
            if let Err(e) = r.plan(8) {
                prop_assert!(e.status == 400 || e.status == 413);
            }
        }
        let _ = serde_json::from_value::<SearchRequest>(v);
    }
}
