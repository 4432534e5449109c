//! Images in words through the daemon, against a real mosquitto: the classifier's ImageNet
//! classes on `labels`, zero-shot words scored on photos (ConSE), photos in the search index
//! answering a sentence on `query`, and texts in the same space.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::util::{self, fixture_path, publish, Broker, Daemon, Sub};

/// The first start embeds the 1000 class names (cached in the state dir afterwards).
const T: Duration = Duration::from_secs(240);

/// Text and vision (no audio: faster starts), `device_id = "test"`.
fn write_config(dir: &Path, port: u16, extra: &str) -> PathBuf {
    util::write_config(
        dir,
        "test",
        &format!(
            "[encoders.audio]\nenabled = false\n[stats]\ninterval_s = 0\n{extra}\n\
             [mqtt]\nbroker = \"mqtt://127.0.0.1:{port}\"\n"
        ),
    )
}

fn image(port: u16, id: &str, file: &str) {
    publish(
        port,
        "edgefuse/test/in/image",
        &[
            "-f",
            &fixture_path(&format!("tests/fixtures/images/{file}")),
            "-D",
            "publish",
            "correlation-data",
            id,
        ],
    );
}

fn rank(words: &serde_json::Value, label: &str) -> usize {
    words["scores"]
        .as_array()
        .unwrap_or_else(|| panic!("no scores in {words}"))
        .iter()
        .position(|s| s["label"] == label)
        .unwrap_or_else(|| panic!("{label} not scored: {words}"))
}

#[test]
fn a_photo_gets_its_classes_and_words_and_a_sentence_finds_it() {
    let broker = Broker::any();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        broker.port,
        "[fusion]\ntop_k = 10\n[fusion.zero_shot]\n\
         words = [\"rocket\", \"coffee\", \"cat\", \"motorcycle\", \"weather\"]\n",
    );
    let mut sub = Sub::start(broker.port, "#");
    let daemon = Daemon::start(&config);
    sub.expect("edgefuse/test/available", T, |m| m.payload == "online");

    // The photo's record carries its vector in the ConSE space beside DINOv2's.
    image(broker.port, "img-coffee", "coffee.jpg");
    let e = sub
        .expect("/embedding/vision", T, |m| m.json()["id"] == "img-coffee")
        .json();
    let space = e["semantic"]["space"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(space.starts_with("conse/"), "{e}");
    assert_eq!(e["semantic"]["vector"].as_array().unwrap().len(), 384);
    assert_ne!(e["semantic"]["vector"], e["vector"]);

    // `labels`: the ImageNet classes, espresso first, and the words, coffee above rocket,
    // with the classes that carried the score.
    let l = sub
        .expect("/labels", T, |m| {
            m.json()["items"]["vision"]["id"] == "img-coffee"
        })
        .json();
    let classes = l["classes"].as_array().unwrap_or_else(|| panic!("{l}"));
    assert_eq!(classes.len(), 5, "encoders.classifier.top_k: {l}");
    assert_eq!(classes[0]["name"], "espresso", "{l}");
    let p0 = classes[0]["probability"].as_f64().unwrap();
    assert!(p0 > 0.5 && p0 <= 1.0, "{l}");
    assert!(classes[1]["probability"].as_f64().unwrap() <= p0);
    let words = &l["words"];
    assert_eq!(words["item"], "img-coffee");
    assert_eq!(words["modality"], "vision");
    assert!(rank(words, "coffee") < rank(words, "rocket"), "{l}");
    assert_eq!(rank(words, "coffee"), 0, "{l}");
    let reason = &words["scores"][0]["reason"];
    assert_eq!(reason[0]["class"], "espresso", "{l}");

    // Other photos, and a text, all in the same space.
    for (id, file) in [
        ("img-rocket", "rocket.jpg"),
        ("img-cat", "chelsea.jpg"),
        ("img-moto", "motorcycle_left.jpg"),
    ] {
        image(broker.port, id, file);
        let l = sub
            .expect("/labels", T, |m| m.json()["items"]["vision"]["id"] == id)
            .json();
        assert!(!l["classes"].as_array().unwrap().is_empty(), "{l}");
    }
    publish(
        broker.port,
        "edgefuse/test/in/text",
        &[
            "-m",
            r#"{"id": "t-1", "text": "The weather is fine today."}"#,
        ],
    );
    let t = sub
        .expect("/embedding/text", T, |m| m.json()["id"] == "t-1")
        .json();
    assert_eq!(t["semantic"]["space"], space.as_str());
    let l = sub
        .expect("/labels", T, |m| m.json()["words"]["item"] == "t-1")
        .json();
    assert!(l.get("classes").is_none(), "no classes for a text: {l}");

    // A sentence finds the photo it describes.
    for (q, want) in [("a cup of coffee", "img-coffee"), ("a cat", "img-cat")] {
        let body = serde_json::json!({ "id": format!("q-{want}"), "text": q }).to_string();
        publish(broker.port, "edgefuse/test/query", &["-m", &body]);
        let r = sub
            .expect("/query/result", T, |m| m.json()["query"] == q)
            .json();
        assert_eq!(r["space"], space.as_str());
        assert_eq!(r["searched"], 5, "four photos and a text: {r}");
        assert_eq!(r["results"][0]["id"], want, "{q}: {r}");
        assert_eq!(r["results"][0]["modality"], "vision", "{r}");
    }

    // A reload (SIGHUP) keeps the classifier and rebuilds the space from its cache: images
    // still get classes, and the index (same space) still answers.
    daemon.signal("HUP");
    image(broker.port, "img-coffee-2", "coffee.png");
    let l = sub
        .expect("/labels", T, |m| {
            m.json()["items"]["vision"]["id"] == "img-coffee-2"
        })
        .json();
    assert_eq!(l["classes"][0]["name"], "espresso", "{l}");
    publish(
        broker.port,
        "edgefuse/test/query",
        &[
            "-m",
            r#"{"text": "espresso", "modality": "vision", "k": 2}"#,
        ],
    );
    let r = sub
        .expect("/query/result", T, |m| m.json()["query"] == "espresso")
        .json();
    let mut top: Vec<&str> = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap())
        .collect();
    top.sort_unstable();
    assert_eq!(top, ["img-coffee", "img-coffee-2"], "{r}");
    drop(daemon);
}
