//! `edgefuse bench` as a user runs it: the JSON schema, and numbers that are positive and agree
//! with each other. Tiny iteration counts; no timing thresholds (speed belongs in docs/performance.md).

use serde_json::Value;

use crate::util::{run_edgefuse as edgefuse, stderr};

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn u(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("not an unsigned integer: {v}"))
}

#[test]
fn bench_json_reports_every_modality_batch_and_thread_count_consistently() {
    let o = edgefuse(&[
        "bench",
        "--json",
        "-n",
        "2",
        "--warmup",
        "0",
        "-b",
        "1,2",
        "-t",
        "1,2",
        "--burst",
        "2",
        "-j",
        "1,2",
        "--profile",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: Value = serde_json::from_slice(&o.stdout).expect("bench --json prints one JSON object");
    assert_eq!(r["schema"], 1);
    assert_eq!(r["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(r["machine"]["arch"], std::env::consts::ARCH);
    assert!(u(&r["machine"]["cpus"]) >= 1);
    assert!(!r["machine"]["tract_isa"].as_array().unwrap().is_empty());
    assert_eq!(r["settings"]["iterations"], 2);
    assert_eq!(r["settings"]["batches"], serde_json::json!([1, 2]));
    assert_eq!(r["settings"]["threads"], serde_json::json!([1, 2]));
    assert_eq!(r["settings"]["burst"], 2);
    assert_eq!(r["settings"]["in_flight"], serde_json::json!([1, 2]));

    let rss = &r["rss_bytes"];
    assert!(u(&rss["start"]) > 0);
    assert!(
        u(&rss["loaded"]) > u(&rss["start"]),
        "loading three models must grow RSS: {rss}"
    );
    assert!(u(&rss["peak"]) >= u(&rss["loaded"]), "{rss}");
    assert!(u(&rss["peak"]) >= u(&rss["end"]), "{rss}");

    let mods = r["modalities"].as_array().unwrap();
    let names: Vec<&str> = mods
        .iter()
        .map(|m| m["modality"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["text", "vision", "audio"]);
    for m in mods {
        let name = m["modality"].as_str().unwrap();
        assert!(f(&m["load_ms"]) > 0.0, "{name}");
        assert_eq!(m["model"]["sha256"].as_str().unwrap().len(), 12, "{name}");
        assert!(!m["kernels"].as_array().unwrap().is_empty(), "{name}");
        assert!(!m["input"].as_str().unwrap().is_empty(), "{name}");
        let profile = m["profile"].as_array().expect("--profile adds a profile");
        assert!(!profile.is_empty(), "{name}");
        let share: f64 = profile.iter().map(|op| f(&op["percent"])).sum();
        assert!(
            (share - 100.0).abs() < 0.01,
            "{name}: shares sum to {share}"
        );
        assert!(profile.iter().all(|op| u(&op["nodes"]) >= 1), "{name}");
        let ms: Vec<f64> = profile.iter().map(|op| f(&op["ms"])).collect();
        assert!(
            ms.windows(2).all(|w| w[0] >= w[1]),
            "{name}: not sorted: {ms:?}"
        );
        let runs = m["runs"].as_array().unwrap();
        let combos: Vec<(u64, u64)> = runs
            .iter()
            .map(|r| (u(&r["batch"]), u(&r["threads"])))
            .collect();
        assert_eq!(combos, [(1, 1), (1, 2), (2, 1), (2, 2)], "{name}");
        for run in runs {
            assert_eq!(run["iterations"], 2);
            let batch = u(&run["batch"]) as f64;
            let mut stages = 0.0;
            for key in ["preprocess_ms", "inference_ms", "postprocess_ms", "call_ms"] {
                let s = &run[key];
                let (p50, p95, mean) = (f(&s["p50"]), f(&s["p95"]), f(&s["mean"]));
                assert!(p50 > 0.0, "{name} {key}: {s}");
                assert!(p50 <= p95, "{name} {key}: {s}");
                assert!(mean > 0.0, "{name} {key}: {s}");
                if key != "call_ms" {
                    stages += mean;
                }
            }
            // Per-item stage times add up to at most one whole call divided among its items.
            let call = f(&run["call_ms"]["mean"]);
            assert!(
                stages * batch <= call * 1.001,
                "{name}: stages {stages} ms × {batch} > call {call} ms"
            );
            let ips = f(&run["items_per_s"]);
            assert!(
                (ips - batch * 1e3 / call).abs() <= 1e-6 * ips,
                "{name}: items/s {ips} vs call {call} ms"
            );
        }
        let bursts = m["bursts"].as_array().expect("--burst adds burst rows");
        let combos: Vec<(u64, u64)> = bursts
            .iter()
            .map(|b| (u(&b["threads"]), u(&b["runs_in_flight"])))
            .collect();
        assert_eq!(combos, [(1, 1), (1, 2), (2, 1), (2, 2)], "{name}");
        for b in bursts {
            assert_eq!((u(&b["items"]), u(&b["rounds"])), (2, 2), "{name}: {b}");
            let (wall, item) = (&b["wall_ms"], &b["item_ms"]);
            assert!(f(&item["p50"]) > 0.0, "{name}: {b}");
            // Every item is answered within its burst.
            assert!(f(&item["p95"]) <= f(&wall["p95"]) * 1.001, "{name}: {b}");
            let ips = f(&b["items_per_s"]);
            assert!(
                (ips - 2e3 / f(&wall["p50"])).abs() <= 1e-6 * ips,
                "{name}: {b}"
            );
        }
    }
    // The image classifier is on by default, so it is measured beside vision, and `--profile`
    // profiles it too (its convolutions are where a photo's time goes as shipped).
    let c = &r["classifier"];
    assert_eq!(c["runs"].as_array().map(Vec::len), Some(2), "{c}");
    let profile = c["profile"]
        .as_array()
        .expect("--profile profiles the classifier");
    let share: f64 = profile.iter().map(|op| f(&op["percent"])).sum();
    assert!(
        (share - 100.0).abs() < 0.01,
        "classifier shares sum to {share}"
    );
    assert!(profile.iter().any(|op| op["op"] == "OptMatMul"), "{c}");
}

#[test]
fn bench_prints_a_table_and_takes_its_own_inputs() {
    let o = edgefuse(&[
        "bench",
        "-m",
        "vision",
        "-n",
        "1",
        "-b",
        "1",
        "-t",
        "1",
        "--burst",
        "2",
        "-j",
        "2",
        "--image",
        "tests/fixtures/images/coffee.jpg",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("edgefuse") && out.contains("RSS:"), "{out}");
    assert!(
        out.contains("vision — DINOv2-S14-CLS") && out.contains("450×300 image"),
        "{out}"
    );
    assert!(!out.contains("text —") && !out.contains("audio —"), "{out}");
    assert!(out.contains("items/s"), "{out}");
    assert!(
        out.contains("burst of 2 queued at once through the daemon's worker (max_batch 4)"),
        "{out}"
    );
}

#[test]
fn bench_refuses_bad_arguments_with_one_clear_line() {
    for (args, want) in [
        (&["bench", "-n", "0"][..], "--iterations"),
        (&["bench", "-m", "smell"][..], "unknown modality"),
        (&["bench", "-b", "0"][..], "positive"),
        (&["bench", "-j", "0"][..], "positive"),
        (
            &["bench", "-m", "vision", "--image", "no/such.jpg"][..],
            "no/such.jpg",
        ),
    ] {
        let o = edgefuse(args);
        assert!(!o.status.success(), "{args:?} succeeded");
        let err = stderr(&o);
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
