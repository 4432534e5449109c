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
    let coffee_record = sub.expect("/labels", T, |m| {
        m.json()["items"]["vision"]["id"] == "img-coffee"
    });
    let l = coffee_record.json();
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

    // Home Assistant: the image-class and word sensors, rendered on this very record.
    let mut ha = Sub::start(broker.port, "homeassistant/sensor/edgefuse_test/+/config");
    let mut class_sensor = None;
    let mut word_sensor = None;
    while let Some(m) = ha.next(Duration::from_secs(2)) {
        if m.topic.ends_with("/image_class/config") {
            class_sensor = Some(HaSensor::new(m.json()));
        } else if m.topic.ends_with("/zero_shot_word/config") {
            word_sensor = Some(HaSensor::new(m.json()));
        }
    }
    let mut class_sensor = class_sensor.expect("the image-class sensor is announced");
    let mut word_sensor = word_sensor.expect("the zero-shot word sensor is announced");
    assert_eq!(
        word_sensor.config["enabled_by_default"], true,
        "words are configured"
    );
    for s in [&mut class_sensor, &mut word_sensor] {
        assert_eq!(s.config["state_topic"], "edgefuse/test/labels");
        s.receive(&coffee_record.payload);
    }
    assert_eq!(class_sensor.state, "espresso");
    assert_eq!(
        class_sensor.attributes["probability"],
        classes[0]["probability"]
    );
    assert_eq!(class_sensor.attributes["image"], "img-coffee");
    assert_eq!(word_sensor.state, "coffee");
    assert_eq!(word_sensor.attributes["score"], words["scores"][0]["score"]);
    assert_eq!(word_sensor.attributes["reason"][0]["class"], "espresso");

    // Other photos, and a text, all in the same space.
    for (id, file) in [
        ("img-rocket", "rocket.jpg"),
        ("img-cat", "chelsea.jpg"),
        ("img-moto", "motorcycle_left.jpg"),
    ] {
        image(broker.port, id, file);
        let m = sub.expect("/labels", T, |m| m.json()["items"]["vision"]["id"] == id);
        let l = m.json();
        assert!(!l["classes"].as_array().unwrap().is_empty(), "{l}");
        class_sensor.receive(&m.payload);
        assert_eq!(
            class_sensor.state,
            l["classes"][0]["name"].as_str().unwrap()
        );
        assert_eq!(class_sensor.attributes["image"], id);
    }
    let last_image = class_sensor.clone();
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
    let m = sub.expect("/labels", T, |m| m.json()["words"]["item"] == "t-1");
    let l = m.json();
    assert!(l.get("classes").is_none(), "no classes for a text: {l}");
    // In Home Assistant a text moves the word sensor and leaves the last image's class.
    class_sensor.receive(&m.payload);
    word_sensor.receive(&m.payload);
    assert_eq!(class_sensor, last_image);
    assert_eq!(
        word_sensor.state,
        l["words"]["scores"][0]["label"].as_str().unwrap()
    );
    assert_eq!(word_sensor.attributes["item"], "t-1");
    assert_eq!(word_sensor.attributes["reason"], serde_json::json!([]));

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

/// A Home Assistant MQTT sensor from its discovery config: state and attributes updated per
/// message as Home Assistant does, its templates rendered with minijinja (Jinja) with the
/// variables Home Assistant gives them (`value`, `value_json`, `this`).
#[derive(Debug, Clone, PartialEq)]
struct HaSensor {
    config: serde_json::Value,
    state: String,
    attributes: serde_json::Map<String, serde_json::Value>,
}

impl HaSensor {
    fn new(config: serde_json::Value) -> HaSensor {
        HaSensor {
            config,
            state: "unknown".into(),
            attributes: serde_json::Map::new(),
        }
    }

    fn render(&self, key: &str, payload: &str) -> String {
        let template = self.config[key]
            .as_str()
            .unwrap_or_else(|| panic!("no {key} in {}", self.config));
        let value_json: serde_json::Value =
            serde_json::from_str(payload).unwrap_or(serde_json::Value::Null);
        let this = serde_json::json!({"state": self.state, "attributes": self.attributes});
        minijinja::Environment::new()
            .render_str(
                template,
                minijinja::context! { value => payload, value_json => value_json, this => this },
            )
            .unwrap_or_else(|e| panic!("{template} on {payload}: {e:#}"))
    }

    fn receive(&mut self, payload: &str) {
        let state = self.render("value_template", payload);
        let attributes = self.render("json_attributes_template", payload);
        match serde_json::from_str(&attributes) {
            Ok(serde_json::Value::Object(m)) => self.attributes = m,
            other => panic!("attributes are not a JSON object: {attributes} ({other:?})"),
        }
        self.state = state;
    }
}

/// `edgefuse describe` and the daemon's `labels` record score the same words on the same photo
/// (and text) alike: one code path, with the `[semantic]` settings that shape the words
/// (`template`, `label_text`) and the image vectors (`top_t`, `temperature`, `reasons`) set
/// away from their defaults so that a path ignoring one of them would differ.
#[test]
fn describe_and_the_daemon_give_the_same_zero_shot_scores() {
    let broker = Broker::any();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        broker.port,
        "[fusion]\ntop_k = 10\n[fusion.zero_shot]\n\
         words = [\"coffee\", \"cat\", \"rocket\", \"kitchen\", \"dog\"]\n\
         [semantic]\ntemplate = \"a photo of a {}\"\nlabel_text = \"name\"\n\
         temperature = 2.0\ntop_t = 5\nreasons = 2\n",
    );
    let mut sub = Sub::start(broker.port, "edgefuse/test/#");
    let daemon = Daemon::start(&config);
    sub.expect("edgefuse/test/available", T, |m| m.payload == "online");
    let mut daemon_words = std::collections::BTreeMap::new();
    for (id, file) in [("img-cat", "chelsea.jpg"), ("img-coffee", "coffee.jpg")] {
        image(broker.port, id, file);
        let l = sub
            .expect("/labels", T, |m| m.json()["words"]["item"] == id)
            .json();
        daemon_words.insert(format!("tests/fixtures/images/{file}"), l["words"].clone());
    }
    let sentence = "a cup of espresso";
    publish(
        broker.port,
        "edgefuse/test/in/text",
        &[
            "-m",
            &serde_json::json!({"id": "t-1", "text": sentence}).to_string(),
        ],
    );
    let l = sub
        .expect("/labels", T, |m| m.json()["words"]["item"] == "t-1")
        .json();
    daemon_words.insert(sentence.to_owned(), l["words"].clone());
    drop(daemon);

    // No --labels: describe scores the daemon's words (fusion.zero_shot.words).
    let o = util::run_edgefuse(&[
        "--config",
        config.to_str().unwrap(),
        "describe",
        "--text",
        sentence,
        "tests/fixtures/images/chelsea.jpg",
        "tests/fixtures/images/coffee.jpg",
    ]);
    assert!(o.status.success(), "{}", util::stderr(&o));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for line in &lines {
        let input = line["input"].as_str().unwrap();
        let d = line["zero_shot"].as_array().unwrap();
        let w = daemon_words[input]["scores"].as_array().unwrap();
        assert_eq!(d.len(), 5, "{line}");
        assert_eq!(w.len(), 5, "{input}: {w:?}");
        for (a, b) in d.iter().zip(w) {
            assert_eq!(
                a["label"], b["label"],
                "{input}: describe {d:?}, daemon {w:?}"
            );
            let (sa, sb) = (a["score"].as_f64().unwrap(), b["score"].as_f64().unwrap());
            assert!((sa - sb).abs() < 1e-5, "{input}: {a} vs {b}");
            let ra = a["reason"].as_array().map_or(&[][..], |r| r.as_slice());
            let rb = b["reason"].as_array().map_or(&[][..], |r| r.as_slice());
            assert_eq!(ra.len(), rb.len(), "{input}: {a} vs {b}");
            for (x, y) in ra.iter().zip(rb) {
                assert_eq!(x["class"], y["class"], "{input}: {a} vs {b}");
                let (wx, wy) = (x["weight"].as_f64().unwrap(), y["weight"].as_f64().unwrap());
                assert!((wx - wy).abs() < 1e-5, "{input}: {a} vs {b}");
            }
        }
        if line["modality"] == "vision" {
            assert_eq!(
                d[0]["reason"].as_array().unwrap().len(),
                2,
                "semantic.reasons: {line}"
            );
        }
    }
    let top = |input: &str| {
        lines.iter().find(|l| l["input"] == input).unwrap()["zero_shot"][0]["label"].clone()
    };
    assert_eq!(top("tests/fixtures/images/chelsea.jpg"), "cat");
    assert_eq!(top("tests/fixtures/images/coffee.jpg"), "coffee");
    assert_eq!(top(sentence), "coffee");
}
