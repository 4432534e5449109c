//! Home Assistant MQTT discovery: retained config messages under
//! `<discovery_prefix>/<component>/edgefuse_<device>/<object>/config` that describe the
//! daemon's availability, labels, novelty and stats as entities of one device. They are sent
//! on every connect and again whenever Home Assistant announces `online` on its status topic
//! (after a Home Assistant restart). Documented in docs/mqtt.md.

use serde_json::json;

use super::Topics;
pub use crate::config::HomeAssistantConfig;

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

pub fn build(cfg: &HomeAssistantConfig, topics: &Topics, device_id: &str) -> Discovery {
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
    let entities = [
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
        let d = build(&HomeAssistantConfig::default(), &topics, "pi 4/b");
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
        let d = build(&cfg, &Topics::new("edgefuse", "x"), "x");
        assert_eq!(d.status_topic, "ha/status");
        assert!(d.messages.iter().all(|(t, _)| t.starts_with("ha/")));
    }
}
