//! Home Assistant MQTT discovery: retained config messages under
//! `<discovery_prefix>/<component>/edgefuse_<device>/<object>/config` that describe the
//! daemon's availability, labels, novelty and stats as entities of one device. They are sent
//! on every connect and again whenever Home Assistant announces `online` on its status topic
//! (after a Home Assistant restart). Documented in docs/mqtt.md.
//!
//! The value templates are Home Assistant's Jinja. The tests render them with minijinja
//! against real payloads; they keep to what both engines evaluate alike (subscripts for keys
//! that are also dict methods in Jinja, such as `items`; `default` before `tojson` for keys a
//! record may lack) and test optional keys with `in`, so that Home Assistant logs no "Template
//! variable warning" for records without them.

use serde_json::json;

use super::Topics;
pub use crate::config::HomeAssistantConfig;

/// Which optional entities to announce, from what the pipeline will publish.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Entities {
    /// Images get ImageNet `classes` on `labels` (vision, classifier, text and shared space on):
    /// announce the "Image class" sensor.
    pub image_classes: bool,
    /// Zero-shot words can be scored (text and shared space on): announce the "Zero-shot word"
    /// sensor.
    pub words: bool,
    /// Words are configured at start (`fusion.zero_shot.words` or a list saved by
    /// `zero_shot/set`): the word sensor is enabled by default. Without, Home Assistant lists it
    /// disabled (a list set over MQTT later needs it enabled there).
    pub words_configured: bool,
}

impl Entities {
    /// From the config, and the word list saved under `state_dir` (read, never written).
    pub fn from_config(c: &crate::config::Config) -> Entities {
        let e = &c.encoders;
        let space = c.shared_space.enabled && e.text.enabled;
        let saved = std::fs::read(c.state_dir.join("zero_shot_words.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|v| v["words"].as_array().is_some_and(|w| !w.is_empty()));
        Entities {
            image_classes: space && e.vision.enabled && e.classifier.enabled && c.semantic.enabled,
            words: space,
            words_configured: space && (saved || !c.fusion.zero_shot.words.is_empty()),
        }
    }
}

/// `state` of the image's most probable ImageNet class; a `labels` record without `classes`
/// (a text, a sound) keeps the last image's.
pub const IMAGE_CLASS_STATE: &str =
    "{{ value_json.classes[0].name if 'classes' in value_json else this.state }}";
/// Its attributes: the class's `probability`, the image's id and every class reported.
pub const IMAGE_CLASS_ATTRIBUTES: &str = "{{ ({'probability': value_json.classes[0].probability, \
'image': value_json['items']['vision']['id'], 'classes': value_json.classes} \
if 'classes' in value_json else this.attributes) | tojson }}";
/// `state` of the best zero-shot word of the last item that had words scored; records without
/// `words` keep it.
pub const WORD_STATE: &str =
    "{{ value_json.words.scores[0].label if 'words' in value_json else this.state }}";
/// Its attributes: the word's `score`, the item and modality it was scored on, the classes
/// that carried the score (`reason`, none for a text) and every word's score.
pub const WORD_ATTRIBUTES: &str = "{{ ({'score': value_json.words.scores[0].score, \
'item': value_json.words.item, 'modality': value_json.words.modality, \
'reason': value_json.words.scores[0].reason | default([]), 'scores': value_json.words.scores} \
if 'words' in value_json else this.attributes) | tojson }}";

/// What the MQTT event loop needs to announce the device.
#[derive(Debug, Clone)]
pub struct Discovery {
    /// Home Assistant's birth/last-will topic (`<prefix>/status`).
    pub status_topic: String,
    /// Retained `(topic, JSON config)` pairs.
    pub messages: Vec<(String, String)>,
}

/// Home Assistant object ids allow `[a-zA-Z0-9_-]`.
fn object_id(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub fn build(
    cfg: &HomeAssistantConfig,
    topics: &Topics,
    device_id: &str,
    optional: Entities,
) -> Discovery {
    let prefix = cfg.discovery_prefix.trim_end_matches('/');
    let node = format!("edgefuse_{}", object_id(device_id));
    let version = env!("CARGO_PKG_VERSION");
    let device = json!({
        "identifiers": [node],
        "name": format!("edgefuse {device_id}"),
        "manufacturer": "edgefuse",
        "model": "edgefuse embedding daemon",
        "sw_version": version,
    });
    // `available` also carries `stopped` (clean exit): anything but `online` is offline.
    let availability = json!([{
        "topic": topics.available(),
        "value_template": "{{ 'online' if value == 'online' else 'offline' }}",
    }]);
    let stats = topics.at("stats");
    let labels = topics.at("labels");
    let mut entities = vec![
        (
            "binary_sensor",
            "status",
            json!({
                "name": "Status",
                "state_topic": topics.available(),
                "value_template": "{{ 'ON' if value == 'online' else 'OFF' }}",
                "device_class": "connectivity",
                "entity_category": "diagnostic",
            }),
        ),
        (
            "sensor",
            "label",
            json!({
                "name": "Label",
                "state_topic": labels,
                "value_template":
                    "{{ value_json.labels[0].label if value_json.labels else 'none' }}",
                "json_attributes_topic": labels,
                "json_attributes_template":
                    "{{ {'group': value_json.group, 'labels': value_json.labels} | tojson }}",
                "icon": "mdi:tag-search",
            }),
        ),
        (
            "sensor",
            "label_score",
            json!({
                "name": "Label score",
                "state_topic": labels,
                "value_template":
                    "{{ (value_json.labels[0].score if value_json.labels else 0) | round(3) }}",
                "state_class": "measurement",
            }),
        ),
        (
            "sensor",
            "novelty",
            json!({
                "name": "Novelty",
                "state_topic": topics.at("fused"),
                "value_template": "{{ value_json.novelty | round(3) }}",
                "state_class": "measurement",
                "icon": "mdi:creation",
            }),
        ),
        (
            "sensor",
            "uptime",
            json!({
                "name": "Uptime",
                "state_topic": stats,
                "value_template": "{{ value_json.uptime_s | int }}",
                "unit_of_measurement": "s",
                "device_class": "duration",
                "entity_category": "diagnostic",
            }),
        ),
        (
            "sensor",
            "memory",
            json!({
                "name": "Memory (RSS)",
                "state_topic": stats,
                "value_template": "{{ value_json.rss_bytes }}",
                "unit_of_measurement": "B",
                "device_class": "data_size",
                "state_class": "measurement",
                "entity_category": "diagnostic",
            }),
        ),
        (
            "sensor",
            "spool_records",
            json!({
                "name": "Results waiting in the spool",
                "state_topic": stats,
                "value_template": "{{ value_json.spool.records if value_json.spool else 0 }}",
                "state_class": "measurement",
                "entity_category": "diagnostic",
            }),
        ),
        (
            "sensor",
            "spool_drops",
            json!({
                "name": "Results dropped by the spool",
                "state_topic": stats,
                "value_template": "{{ value_json.spool.drops if value_json.spool else 0 }}",
                "state_class": "total_increasing",
                "entity_category": "diagnostic",
            }),
        ),
        (
            "sensor",
            "reconnects",
            json!({
                "name": "Broker reconnects",
                "state_topic": stats,
                "value_template": "{{ value_json.mqtt.reconnects }}",
                "state_class": "total_increasing",
                "entity_category": "diagnostic",
            }),
        ),
    ];
    if optional.image_classes {
        entities.push((
            "sensor",
            "image_class",
            json!({
                "name": "Image class",
                "state_topic": labels,
                "value_template": IMAGE_CLASS_STATE,
                "json_attributes_topic": labels,
                "json_attributes_template": IMAGE_CLASS_ATTRIBUTES,
                "icon": "mdi:image-search",
            }),
        ));
    }
    if optional.words {
        entities.push((
            "sensor",
            "zero_shot_word",
            json!({
                "name": "Zero-shot word",
                "state_topic": labels,
                "value_template": WORD_STATE,
                "json_attributes_topic": labels,
                "json_attributes_template": WORD_ATTRIBUTES,
                "icon": "mdi:text-search",
                "enabled_by_default": optional.words_configured,
            }),
        ));
    }
    let messages = entities
        .into_iter()
        .map(|(component, object, mut config)| {
            let unique = format!("{node}_{object}");
            if let Some(m) = config.as_object_mut() {
                m.insert("unique_id".into(), json!(unique));
                m.insert("device".into(), device.clone());
                m.insert(
                    "origin".into(),
                    json!({"name": "edgefuse", "sw_version": version}),
                );
                if component != "binary_sensor" {
                    m.insert("availability".into(), availability.clone());
                }
            }
            (
                format!("{prefix}/{component}/{node}/{object}/config"),
                config.to_string(),
            )
        })
        .collect();
    Discovery {
        status_topic: format!("{prefix}/status"),
        messages,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entity_has_a_unique_id_a_device_and_a_topic_under_the_prefix() {
        let topics = Topics::new("edgefuse", "pi 4/b");
        let d = build(
            &HomeAssistantConfig::default(),
            &topics,
            "pi 4/b",
            Entities::default(),
        );
        assert_eq!(d.status_topic, "homeassistant/status");
        assert!(d.messages.len() >= 8);
        let mut ids = std::collections::BTreeSet::new();
        for (topic, body) in &d.messages {
            let parts: Vec<&str> = topic.split('/').collect();
            assert_eq!(parts.len(), 5, "{topic}");
            assert_eq!(parts[0], "homeassistant");
            assert!(["sensor", "binary_sensor"].contains(&parts[1]), "{topic}");
            assert_eq!(parts[2], "edgefuse_pi_4_b");
            assert_eq!(parts[4], "config");
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            assert!(ids.insert(v["unique_id"].as_str().unwrap().to_owned()));
            assert_eq!(v["device"]["identifiers"][0], "edgefuse_pi_4_b");
            let state = v["state_topic"].as_str().unwrap();
            assert!(state.starts_with("edgefuse/pi 4/b/"), "{state}");
            if parts[1] == "sensor" {
                assert_eq!(v["availability"][0]["topic"], "edgefuse/pi 4/b/available");
            }
        }
        for want in ["status", "label", "novelty", "uptime", "spool_drops"] {
            assert!(ids.contains(&format!("edgefuse_pi_4_b_{want}")), "{want}");
        }
    }

    #[test]
    fn the_prefix_is_configurable() {
        let cfg = HomeAssistantConfig {
            enabled: true,
            discovery_prefix: "ha/".into(),
        };
        let d = build(
            &cfg,
            &Topics::new("edgefuse", "x"),
            "x",
            Entities::default(),
        );
        assert_eq!(d.status_topic, "ha/status");
        assert!(d.messages.iter().all(|(t, _)| t.starts_with("ha/")));
    }

    // ------------------------------------------------ the templates, rendered as Jinja

    /// Render one Home Assistant template with minijinja, with the variables Home Assistant's
    /// MQTT integration gives it: `value`, `value_json` and `this` (the entity's state object).
    pub(crate) fn render(template: &str, payload: &str, this: &serde_json::Value) -> String {
        let env = minijinja::Environment::new();
        let value_json: serde_json::Value =
            serde_json::from_str(payload).unwrap_or(serde_json::Value::Null);
        env.render_str(
            template,
            minijinja::context! { value => payload, value_json => value_json, this => this },
        )
        .unwrap_or_else(|e| panic!("{template}\n  on {payload}: {e:#}"))
    }

    /// An entity as Home Assistant keeps it: state and attributes, updated per message the way
    /// its MQTT sensor does (the attributes template must render a JSON object).
    pub(crate) struct Entity {
        pub config: serde_json::Value,
        pub state: String,
        pub attributes: serde_json::Map<String, serde_json::Value>,
    }

    impl Entity {
        pub(crate) fn new(config: serde_json::Value) -> Entity {
            Entity {
                config,
                state: "unknown".into(),
                attributes: serde_json::Map::new(),
            }
        }

        pub(crate) fn receive(&mut self, payload: &str) {
            let this = json!({"state": self.state, "attributes": self.attributes});
            let state = render(
                self.config["value_template"].as_str().unwrap(),
                payload,
                &this,
            );
            if let Some(t) = self.config["json_attributes_template"].as_str() {
                let a = render(t, payload, &this);
                match serde_json::from_str(&a) {
                    Ok(serde_json::Value::Object(m)) => self.attributes = m,
                    other => panic!("attributes are not a JSON object: {a} ({other:?})"),
                }
            }
            self.state = state;
        }
    }

    fn entity(d: &Discovery, object: &str) -> Option<Entity> {
        d.messages
            .iter()
            .find(|(t, _)| t.ends_with(&format!("/{object}/config")))
            .map(|(_, body)| Entity::new(serde_json::from_str(body).unwrap()))
    }

    const ALL: Entities = Entities {
        image_classes: true,
        words: true,
        words_configured: true,
    };

    /// A photo's `labels` record as the publisher writes it (docs/mqtt.md), with words.
    fn photo() -> String {
        json!({
            "schema": 1, "id": "fused-3", "group": "default", "ts": "2026-12-01T10:00:00.000Z",
            "items": {"vision": {"id": "img-coffee", "age_ms": 0.0}},
            "labels": [],
            "words": {"item": "img-coffee", "modality": "vision", "scores": [
                {"label": "coffee", "score": 0.62, "reason": [
                    {"class": "espresso", "weight": 0.91, "similarity": 0.7}]},
                {"label": "rocket", "score": 0.05, "reason": [
                    {"class": "espresso", "weight": 0.91, "similarity": 0.01}]}]},
            "classes": [{"name": "espresso", "probability": 0.91},
                        {"name": "cup", "probability": 0.04}]
        })
        .to_string()
    }

    /// A text's record: words without reasons, no classes.
    fn text() -> String {
        json!({
            "schema": 1, "id": "fused-4", "group": "default", "ts": "2026-12-01T10:00:01.000Z",
            "items": {"text": {"id": "t-1", "age_ms": 0.0}},
            "labels": [],
            "words": {"item": "t-1", "modality": "text", "scores": [
                {"label": "weather", "score": 0.55}, {"label": "coffee", "score": 0.1}]}
        })
        .to_string()
    }

    /// A record with neither (an enrolled label's match on a sound without speech).
    fn neither() -> String {
        json!({
            "schema": 1, "id": "fused-5", "group": "default", "ts": "2026-12-01T10:00:02.000Z",
            "items": {"audio": {"id": "a-1", "age_ms": 0.0}},
            "labels": [{"label": "kettle", "score": 0.8, "modalities": {}}]
        })
        .to_string()
    }

    #[test]
    fn the_image_class_sensor_shows_the_top_class_and_keeps_it_through_other_records() {
        let d = build(
            &HomeAssistantConfig::default(),
            &Topics::new("edgefuse", "pi"),
            "pi",
            ALL,
        );
        let mut e = entity(&d, "image_class").expect("announced");
        assert_eq!(e.config["state_topic"], "edgefuse/pi/labels");
        assert_eq!(e.config["json_attributes_topic"], "edgefuse/pi/labels");
        // Before any image, a text leaves it unknown and without attributes.
        e.receive(&text());
        assert_eq!(e.state, "unknown");
        assert!(e.attributes.is_empty(), "{:?}", e.attributes);
        e.receive(&photo());
        assert_eq!(e.state, "espresso");
        assert_eq!(e.attributes["probability"], 0.91);
        assert_eq!(e.attributes["image"], "img-coffee");
        assert_eq!(e.attributes["classes"][1]["name"], "cup");
        let after_photo = e.attributes.clone();
        // A text and a record with neither words nor classes keep the last image's class.
        for other in [text(), neither()] {
            e.receive(&other);
            assert_eq!(e.state, "espresso");
            assert_eq!(e.attributes, after_photo);
        }
    }

    #[test]
    fn the_word_sensor_shows_the_best_word_of_the_last_scored_item() {
        let d = build(
            &HomeAssistantConfig::default(),
            &Topics::new("edgefuse", "pi"),
            "pi",
            ALL,
        );
        let mut w = entity(&d, "zero_shot_word").expect("announced");
        assert_eq!(w.config["enabled_by_default"], true);
        w.receive(&photo());
        assert_eq!(w.state, "coffee");
        assert_eq!(w.attributes["score"], 0.62);
        assert_eq!(w.attributes["item"], "img-coffee");
        assert_eq!(w.attributes["modality"], "vision");
        assert_eq!(w.attributes["reason"][0]["class"], "espresso");
        assert_eq!(w.attributes["scores"].as_array().unwrap().len(), 2);
        // A text's words have no reason: an empty list, not a failed render.
        w.receive(&text());
        assert_eq!(w.state, "weather");
        assert_eq!(w.attributes["item"], "t-1");
        assert_eq!(w.attributes["reason"], json!([]));
        let after_text = w.attributes.clone();
        w.receive(&neither());
        assert_eq!(w.state, "weather");
        assert_eq!(w.attributes, after_text);
    }

    #[test]
    fn optional_sensors_follow_what_the_pipeline_publishes() {
        let topics = Topics::new("edgefuse", "pi");
        let cfg = HomeAssistantConfig::default();
        let none = build(&cfg, &topics, "pi", Entities::default());
        assert!(entity(&none, "image_class").is_none());
        assert!(entity(&none, "zero_shot_word").is_none());
        let words_later = Entities {
            words: true,
            ..Entities::default()
        };
        let d = build(&cfg, &topics, "pi", words_later);
        assert!(entity(&d, "image_class").is_none());
        let w = entity(&d, "zero_shot_word").unwrap();
        assert_eq!(w.config["enabled_by_default"], false, "no words yet");

        let dir = tempfile::tempdir().unwrap();
        let toml = |extra: &str| {
            format!(
                "state_dir = {:?}\n{extra}",
                dir.path().display().to_string()
            )
        };
        let c = crate::config::Config::from_toml(&toml(""), "t").unwrap();
        assert_eq!(
            Entities::from_config(&c),
            Entities {
                image_classes: true,
                words: true,
                words_configured: false
            },
            "the defaults: classifier and shared space on, no words"
        );
        let c =
            crate::config::Config::from_toml(&toml("[fusion.zero_shot]\nwords = [\"cat\"]\n"), "t")
                .unwrap();
        assert!(Entities::from_config(&c).words_configured);
        // A list saved by `zero_shot/set` counts; an empty one does not.
        let c = crate::config::Config::from_toml(&toml(""), "t").unwrap();
        let saved = dir.path().join("zero_shot_words.json");
        std::fs::write(&saved, r#"{"schema":1,"words":[]}"#).unwrap();
        assert!(!Entities::from_config(&c).words_configured);
        std::fs::write(&saved, r#"{"schema":1,"words":["kettle"]}"#).unwrap();
        assert!(Entities::from_config(&c).words_configured);
        for (toml_extra, classes, words) in [
            ("[encoders.classifier]\nenabled = false\n", false, true),
            ("[semantic]\nenabled = false\n", false, true),
            ("[shared_space]\nenabled = false\n", false, false),
            ("[encoders.vision]\nenabled = false\n", false, true),
        ] {
            let c = crate::config::Config::from_toml(&toml(toml_extra), "t").unwrap();
            let e = Entities::from_config(&c);
            assert_eq!((e.image_classes, e.words), (classes, words), "{toml_extra}");
        }
    }

    #[test]
    fn every_template_renders_on_the_payload_of_its_topic() {
        let topics = Topics::new("edgefuse", "pi");
        let d = build(&HomeAssistantConfig::default(), &topics, "pi", ALL);
        let stats = json!({"schema": 1, "uptime_s": 12.5, "rss_bytes": 1000,
            "mqtt": {"reconnects": 2}, "spool": {"records": 3, "drops": 0}})
        .to_string();
        let fused = json!({"schema": 1, "novelty": 0.41234}).to_string();
        let payloads = |topic: &str| -> Vec<String> {
            match topic.rsplit('/').next().unwrap() {
                "available" => vec!["online".into(), "stopped".into()],
                "labels" => vec![photo(), text(), neither()],
                "stats" => vec![stats.clone()],
                "fused" => vec![fused.clone()],
                t => panic!("no sample payload for {t}"),
            }
        };
        let mut rendered = 0;
        for (topic, body) in &d.messages {
            let c: serde_json::Value = serde_json::from_str(body).unwrap();
            let mut e = Entity::new(c.clone());
            for p in payloads(c["state_topic"].as_str().unwrap()) {
                e.receive(&p);
                assert!(!e.state.trim().is_empty(), "{topic} on {p}");
                rendered += 1;
            }
        }
        assert!(rendered >= 15, "{rendered}");
        let mut label = entity(&d, "label").unwrap();
        label.receive(&photo());
        assert_eq!(label.state, "none", "no enrolled label matched");
        label.receive(&neither());
        assert_eq!(label.state, "kettle");
        let mut novelty = entity(&d, "novelty").unwrap();
        novelty.receive(&fused);
        assert_eq!(novelty.state, "0.412");
    }
}
