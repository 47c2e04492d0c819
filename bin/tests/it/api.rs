//! The HTTP API and the CLI verbs on a real local grid (`sutra dev`: master + agent + 3 storage
//! processes, 3 shards × 3 replicas): every route, the documented error codes, garbage input
//! that must not take a node down, and NDJSON streaming.

use crate::common;

use common::{call, http, DevGrid};
use serde_json::{json, Value};

fn assert_error(r: (u16, Value), status: u16, code: &str, mentions: &str) {
    assert_eq!(r.0, status, "{}", r.1);
    assert_eq!(r.1["error"]["code"], code, "{}", r.1);
    let msg = r.1["error"]["message"].as_str().unwrap_or("");
    assert!(msg.contains(mentions), "message {msg:?} should mention {mentions:?}");
}

#[test]
fn the_api_and_the_cli_on_a_local_grid() {
    let g = DevGrid::start();
    let api = g.api.clone();

    // Learning from text: triples extracted, unmatched sentences kept as concepts.
    let (s, v) = call(
        &api,
        "POST",
        "/learn",
        json!({"content": "Lyon is located in France. Smog causes asthma. Is Paris big? Blue skies."}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["associations_created"], 2);
    assert_eq!(v["triples"][0]["relation"], "located_in");
    assert_eq!(v["triples"][1]["kind"], "causal");
    assert_eq!(v["unmatched"], json!(["Is Paris big?", "Blue skies."]));
    // Read-your-writes: right after `/learn` answers, the association is visible from its
    // target's end (in-edges, and a one-hop path walked from the target), for pairs whose two
    // ends are on different shards as well as the same one.
    for i in 0..12 {
        let (a, b) = (format!("ryw source {i}"), format!("ryw target {i}"));
        let (s, v) =
            call(&api, "POST", "/learn", json!({"associations": [{"source": a, "target": b, "relation": "r"}]}));
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["in_edges_delivered"], true, "{v}");
        let (s, v) =
            call(&api, "GET", &format!("/concepts/{}/neighbors?direction=in", b.replace(' ', "%20")), Value::Null);
        assert_eq!(s, 200, "{v}");
        assert!(v["neighbors"].as_array().unwrap().iter().any(|n| n["label"] == a.as_str()), "{b} lacks {a}: {v}");
        let (s, v) = call(&api, "POST", "/reason", json!({"start": b, "end": a, "max_depth": 1}));
        assert_eq!((s, &v["found"]), (200, &json!(true)), "{v}");
    }
    assert_error(
        call(&api, "POST", "/learn", json!({"content": "A is a B.", "wait_for": "never"})),
        400,
        "bad_request",
        "wait_for",
    );
    // Structured learning, and the CLI reading it back.
    let (s, v) = call(
        &api,
        "POST",
        "/learn",
        json!({"concepts": [{"label": "Asthma", "content": "A chronic disease of the airways."}],
               "associations": [{"source": "Asthma", "target": "Lung", "relation": "affects", "kind": "causal", "confidence": 0.8}]}),
    );
    assert_eq!(s, 200, "{v}");
    let c = g.json(&["concept", "asthma"]);
    assert_eq!(c["content"], "A chronic disease of the airways.");
    let (s, by_label) = call(&api, "GET", "/concepts?label=ASTHMA", Value::Null);
    assert_eq!((s, &by_label["id"]), (200, &c["id"]));
    let (s, by_id) = call(&api, "GET", &format!("/concepts/{}", c["id"].as_str().unwrap()), Value::Null);
    // The first-seen spelling ("Smog causes asthma.") stays the display label.
    assert_eq!((s, &by_id["label"]), (200, &json!("asthma")));

    // Neighbours with filters (in-edges arrive through the outbox a moment after the write).
    let mut n = Value::Null;
    for _ in 0..50 {
        n = g.json(&["neighbors", "Lung", "--direction", "in", "--kind", "causal"]);
        if n["neighbors"].as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(n["neighbors"][0]["label"], "asthma", "{n}");
    assert_eq!(n["neighbors"][0]["direction"], "in");
    let (_, n) = call(&api, "GET", "/concepts/Paris/neighbors?direction=out&relation=capital_of", Value::Null);
    assert_eq!(n["neighbors"].as_array().map(Vec::len), Some(1), "{n}");
    assert_eq!(n["neighbors"][0]["label"], "France");

    // Reasoning: the design's chain, both modes, and the CLI.
    let r = g.json(&["reason", "Medical_Diagnosis", "Financial_Fraud"]);
    assert_eq!(r["found"], true, "{r}");
    assert_eq!(r["paths"][0]["hops"], 3);
    assert_eq!(r["paths"][0]["concepts"][0]["label"], "Medical_Diagnosis");
    assert!(r["reasoning"][0].as_str().unwrap().contains("Anomaly_Detection detects Financial_Fraud"), "{r}");
    let want = 0.85 * 0.8 * 0.75;
    assert!((r["confidence"].as_f64().unwrap() - want).abs() < 1e-4, "{r}");
    assert!(r["shards_accessed"].as_u64().unwrap() >= 1 && r["rpcs"].as_u64().unwrap() >= 2);
    // Confident mode walks forward only, so it needs the in-edges the outbox delivers a
    // moment after the sample's write (Asia → Continent, seen from Continent).
    let mut r = Value::Null;
    for _ in 0..50 {
        let (s, v) = call(
            &api,
            "POST",
            "/reason",
            json!({"start": "Paris", "end": "Tokyo", "mode": "confident", "max_depth": 8, "max_paths": 1}),
        );
        assert_eq!(s, 200, "{v}");
        r = v;
        if r["found"] == true {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(r["found"], true, "{r}");
    assert_eq!(r["paths"].as_array().map(Vec::len), Some(1));
    assert!((r["confidence"].as_f64().unwrap() - 0.99f64.powi(6)).abs() < 1e-3, "{r}");
    // k paths by confidence: best first, distinct, the first the one above.
    let (_, r) =
        call(&api, "POST", "/reason", json!({"start": "Paris", "end": "Tokyo", "mode": "confident", "max_depth": 8}));
    let confs: Vec<f64> = r["paths"].as_array().unwrap().iter().map(|p| p["confidence"].as_f64().unwrap()).collect();
    assert!(!confs.is_empty() && confs.windows(2).all(|w| w[0] >= w[1]), "{r}");
    assert!((confs[0] - 0.99f64.powi(6)).abs() < 1e-3, "{r}");
    let (_, k) =
        call(&api, "POST", "/reason", json!({"start": "Paris", "end": "Tokyo", "mode": "k_shortest", "max_depth": 8}));
    let hops: Vec<u64> = k["paths"].as_array().unwrap().iter().map(|p| p["hops"].as_u64().unwrap()).collect();
    assert!(!hops.is_empty() && hops.windows(2).all(|w| w[0] <= w[1]), "{k}");
    let (_, r) = call(&api, "POST", "/reason", json!({"start": "Paris", "end": "Tokyo", "max_depth": 2}));
    assert_eq!((&r["found"], &r["confidence"]), (&json!(false), &json!(0.0)));
    let out = g.sutra(&["reason", "Paris", "Tokyo"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Tokyo capital of Japan"));

    // Vector search by text and by vector.
    let s = g.json(&["search", "the lattice tower of Paris on the Champ de Mars", "--k", "3"]);
    assert_eq!(s["hits"][0]["label"], "Eiffel_Tower", "{s}");
    assert_eq!(s["shards_accessed"], 3);
    let (st, v) = call(&api, "POST", "/search", json!({"vector": vec![0.5f32; 768], "k": 2}));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["hits"].as_array().map(Vec::len), Some(2));
    // Found right after its write (not indexed yet: compared exactly), and once indexed; the
    // index's answers are the exact scan's.
    let (st, v) = call(&api, "POST", "/learn", json!({"concepts": [{"label": "Quokka_Island_Ferry"}]}));
    assert_eq!(st, 200, "{v}");
    let ask =
        |exact: bool| call(&api, "POST", "/search", json!({"text": "quokka island ferry", "k": 5, "exact": exact}));
    assert_eq!(ask(false).1["hits"][0]["label"], "Quokka_Island_Ferry");
    let mut indexed = false;
    for _ in 0..100 {
        let (_, v) = ask(false);
        if v["index"]["pending"] == 0 && v["index"]["vectors"].as_u64() > Some(300) {
            indexed = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(indexed, "{}", ask(false).1);
    assert_eq!(ask(false).1["hits"], ask(true).1["hits"]);
    assert_eq!(ask(false).1["hits"][0]["label"], "Quokka_Island_Ferry");
    assert_error(call(&api, "POST", "/search", json!({"text": "x", "exact": "yes"})), 400, "bad_request", "exact");

    // Status, health, metrics.
    let (s, st) = call(&api, "GET", "/cluster/status", Value::Null);
    assert_eq!((s, &st["healthy"], st["shards"].as_array().map(Vec::len)), (200, &json!(true), Some(3)), "{st}");
    assert_eq!(call(&api, "GET", "/healthz", Value::Null).0, 200);
    assert_eq!(call(&api, "GET", "/readyz", Value::Null).0, 200);
    let (s, m) = http(&api, "GET", "/metrics", b"");
    assert_eq!(s, 200);
    assert!(String::from_utf8_lossy(&m).contains("sutra_api_requests_total{route=\"/reason\",status=\"200\"}"));

    // Errors: each with its status, code and the field at fault.
    assert_error(
        call(&api, "POST", "/reason", json!({"start": "Paris", "end": "Tokyo", "max_depth": 11})),
        400,
        "bad_request",
        "max_depth",
    );
    assert_error(
        call(&api, "POST", "/reason", json!({"start": "Paris", "end": "Tokyo", "max_paths": "5"})),
        400,
        "bad_request",
        "max_paths",
    );
    assert_error(
        call(&api, "POST", "/reason", json!({"start": "Paris", "end": "Tokyo", "mood": "x"})),
        400,
        "bad_request",
        "mood",
    );
    assert_error(
        call(&api, "POST", "/reason", json!({"start": "Paris", "end": "Atlantis"})),
        404,
        "not_found",
        "Atlantis",
    );
    assert_error(call(&api, "GET", "/concepts/Atlantis", Value::Null), 404, "not_found", "Atlantis");
    assert_error(call(&api, "GET", "/concepts/Paris/neighbors?limit=0", Value::Null), 400, "bad_request", "limit");
    assert_error(call(&api, "POST", "/search", json!({"vector": [1.0, 2.0]})), 400, "bad_request", "vector");
    assert_error(
        call(
            &api,
            "POST",
            "/learn",
            json!({"associations": [{"source": "a", "target": "b", "relation": "r", "confidence": 2}]}),
        ),
        400,
        "bad_request",
        "associations[0].confidence",
    );
    assert_error(call(&api, "DELETE", "/learn", Value::Null), 405, "method_not_allowed", "method");
    assert_error(call(&api, "GET", "/nowhere", Value::Null), 404, "not_found", "route");
    let big = vec![b' '; 17 * 1024 * 1024];
    let (s, b) = http(&api, "POST", "/learn", &big);
    assert_eq!(s, 413, "{}", String::from_utf8_lossy(&b));
    let e = g.sutra(&["concept", "Atlantis"]);
    assert!(!e.status.success() && String::from_utf8_lossy(&e.stderr).contains("no concept 'Atlantis'"));

    // Garbage to every JSON route: a 4xx each time, and the grid keeps answering.
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let shapes: [&[u8]; 6] = [b"", b"{", b"[]", b"null", b"{\"start\": {}}", b"\xff\xfe{\"a\":1}"];
    for i in 0..120 {
        let body: Vec<u8> = if i < shapes.len() * 3 {
            shapes[i % shapes.len()].to_vec()
        } else {
            (0..(next() % 200)).map(|_| (next() % 256) as u8).collect()
        };
        for path in ["/learn", "/reason", "/search"] {
            let (s, b) = http(&api, "POST", path, &body);
            assert!((400..500).contains(&s), "{path} answered {s} to {body:?}: {}", String::from_utf8_lossy(&b));
            let v: Value = serde_json::from_slice(&b).expect("a JSON error body");
            assert!(v["error"]["message"].is_string());
        }
    }
    assert!(g.sutra(&["concept", "Paris"]).status.success(), "the grid stopped answering");

    // NDJSON: one result per line, errors in place.
    let lines =
        b"{\"content\": \"Oslo is located in Norway.\"}\n\n{\"bad\": 1}\n{\"concepts\": [{\"label\": \"Norway\"}]}\n";
    let (s, b) = http(&api, "POST", "/learn/batch", lines);
    assert_eq!(s, 200);
    let out: Vec<Value> =
        b.split(|c| *c == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect();
    assert_eq!(out.len(), 3, "{out:?}");
    assert_eq!((&out[0]["line"], &out[0]["result"]["associations_created"]), (&json!(1), &json!(1)));
    assert_eq!(out[1]["line"], 3);
    assert_eq!(out[1]["error"]["code"], "bad_request");
    assert_eq!(out[2]["line"], 4);
    assert!(out[2]["result"].is_object());

    // The importers: csv and jsonl, twice each (idempotent).
    let csv = g.dir.path().join("facts.csv");
    std::fs::write(&csv, "subject,relation,object,kind,confidence\nOslo,capital_of,Norway,hierarchical,0.99\n\"Bergen, Norway\",located_in,Norway\nbad line\n").unwrap();
    let jsonl = g.dir.path().join("facts.jsonl");
    std::fs::write(&jsonl, "{\"label\": \"Fjord\", \"content\": \"A long, narrow inlet.\"}\n{\"source\": \"Fjord\", \"target\": \"Norway\", \"relation\": \"found_in\"}\n").unwrap();
    for _ in 0..2 {
        let out = g.sutra(&["import", "--format", "csv", csv.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!((&v["associations"], &v["skipped"]), (&json!(2), &json!(1)), "{v}");
        let out = g.sutra(&["import", "--format", "jsonl", jsonl.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let n = g.json(&["neighbors", "Bergen, Norway"]);
    assert_eq!(n["neighbors"].as_array().map(Vec::len), Some(1), "{n}");
    assert_eq!(g.json(&["concept", "fjord"])["content"], "A long, narrow inlet.");

    forgetting_on_a_local_grid(&g);
}

/// Retraction (architecture.md §12) on a real grid: right after `DELETE` answers, neither side
/// of a forgotten association shows, from either end or through `/reason`; a forgotten
/// concept is gone from lookups, neighbours, paths, search and every replica; learning it
/// again starts afresh; errors are 404 and 400 naming the field. On the grid of the test
/// above (one grid fewer running beside the others).
fn forgetting_on_a_local_grid(g: &DevGrid) {
    let api = g.api.clone();
    let pctl = |s: &str| s.replace(' ', "%20");
    let neighbor_labels = |label: &str, dir: &str| -> Vec<String> {
        let (s, v) = call(&api, "GET", &format!("/concepts/{}/neighbors?direction={dir}", pctl(label)), Value::Null);
        if s == 404 {
            return Vec::new();
        }
        assert_eq!(s, 200, "{v}");
        v["neighbors"].as_array().unwrap().iter().map(|n| n["label"].as_str().unwrap().to_string()).collect()
    };
    let n = 8;
    for i in 0..n {
        let (a, b, c) = (format!("forget a{i}"), format!("forget b{i}"), format!("forget c{i}"));
        let (s, v) = call(
            &api,
            "POST",
            "/learn",
            json!({"concepts": [{"label": a, "content": format!("the {i}th glacier of the northern range")}],
                   "associations": [{"source": a, "target": b, "relation": "r"},
                                    {"source": a, "target": b, "relation": "r", "kind": "causal"},
                                    {"source": c, "target": a, "relation": "q"}]}),
        );
        assert_eq!(s, 200, "{v}");
    }
    for i in 0..n {
        let (a, b, c) = (format!("forget a{i}"), format!("forget b{i}"), format!("forget c{i}"));
        // One association, every kind: gone from both ends right after the answer.
        let (s, v) = call(&api, "DELETE", "/associations", json!({"source": a, "target": b, "relation": "r"}));
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["in_edges_delivered"], true, "{v}");
        assert!(v["forgotten"].as_u64().unwrap() >= 2, "two kinds: {v}");
        assert!(!neighbor_labels(&b, "in").contains(&a), "{b} still has {a}");
        assert!(!neighbor_labels(&a, "out").contains(&b), "{a} still has {b}");
        let (s, v) = call(&api, "POST", "/reason", json!({"start": b, "end": a, "max_depth": 2}));
        assert_eq!((s, &v["found"]), (200, &json!(false)), "{v}");
        assert_error(
            call(&api, "DELETE", "/associations", json!({"source": a, "target": b, "relation": "r"})),
            404,
            "not_found",
            "no association",
        );
        // The concept: its record, and its association with c (whose source is c).
        assert!(neighbor_labels(&c, "out").contains(&a.to_lowercase()) || neighbor_labels(&c, "out").contains(&a));
        let (s, v) = call(&api, "DELETE", &format!("/concepts/{}", pctl(&a)), Value::Null);
        assert_eq!(s, 200, "{v}");
        assert_error(
            call(&api, "GET", &format!("/concepts/{}", pctl(&a)), Value::Null),
            404,
            "not_found",
            "no concept",
        );
        assert!(neighbor_labels(&c, "out").is_empty(), "{c} still points at {a}");
        assert!(neighbor_labels(&a, "both").is_empty());
        let (s, v) = call(&api, "POST", "/reason", json!({"start": c, "end": a, "max_depth": 2}));
        assert!(s == 404 || v["found"] == false, "{s} {v}");
        assert_error(
            call(&api, "DELETE", &format!("/concepts/{}", pctl(&a)), Value::Null),
            404,
            "not_found",
            "no concept",
        );
    }
    // Search, by the index and exactly: no forgotten concept answers.
    for exact in [false, true] {
        let (s, v) = call(
            &api,
            "POST",
            "/search",
            json!({"text": "the 3th glacier of the northern range", "k": 20, "exact": exact}),
        );
        assert_eq!(s, 200, "{v}");
        let labels: Vec<&str> = v["hits"].as_array().unwrap().iter().filter_map(|h| h["label"].as_str()).collect();
        assert!(!labels.iter().any(|l| l.starts_with("forget a")), "exact {exact}: {labels:?}");
    }
    // Every replica (eventual reads straight to each storage process), once it applied.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ids: Vec<_> = (0..n).map(|i| sutra_grid::api::resolve(&format!("forget a{i}"))).collect();
        for p in 0..3 {
            let c = sutra_grid::client::StorageClient::connect(&format!("127.0.0.1:{}", g.base + p)).await.unwrap();
            let mut asked = 0;
            for shard in 0..3 {
                for id in &ids {
                    let start = std::time::Instant::now();
                    // A shard that does not own the id refuses (wrong shard): not asked.
                    while let Ok(r) = c.get_concepts(shard, &[*id]).await {
                        asked += 1;
                        if r.found.is_empty() {
                            break;
                        }
                        assert!(
                            start.elapsed().as_secs() < 10,
                            "replica {p} of shard {shard} still serves {:?}",
                            r.found
                        );
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            }
            assert!(asked >= ids.len(), "process {p} answered for {asked} of {} ids", ids.len());
        }
    });
    // Learned again: a new concept.
    let (s, v) = call(&api, "POST", "/learn", json!({"concepts": [{"label": "forget a0"}]}));
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(&api, "GET", "/concepts?label=forget%20a0", Value::Null);
    assert_eq!((s, &v["content"]), (200, &json!("")), "{v}");
    // Through /learn (and so /learn/batch lines), and the CLI.
    let (s, v) = call(&api, "POST", "/learn", json!({"forget": {"concepts": ["forget b1"], "associations": []}}));
    assert_eq!((s, v["forgotten"].as_u64().map(|f| f >= 1)), (200, Some(true)), "{v}");
    let out = g.sutra(&["forget", "forget c2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = g.sutra(&["forget", "--source", "forget c3", "--target", "nobody", "--relation", "q"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no association"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Bad requests name the field.
    assert_error(
        call(&api, "DELETE", "/associations", json!({"source": "x", "target": "y"})),
        400,
        "bad_request",
        "relation",
    );
    assert_error(
        call(&api, "DELETE", "/associations", json!({"source": "x", "target": "y", "relation": "r", "kind": "odd"})),
        400,
        "bad_request",
        "kind",
    );
    assert_error(
        call(&api, "DELETE", "/associations", json!({"source": " ", "target": "y", "relation": "r"})),
        400,
        "bad_request",
        "source",
    );
    assert_error(call(&api, "DELETE", "/concepts?label=", Value::Null), 400, "bad_request", "id");
    assert_error(
        call(&api, "POST", "/learn", json!({"forget": {"concepts": [""]}})),
        400,
        "bad_request",
        "forget.concepts[0]",
    );
}
