//! The topic layout under `<prefix>/<device_id>/`. Documented in docs/mqtt.md.

use crate::types::Modality;

#[derive(Debug, Clone)]
pub struct Topics {
    pub base: String,
}

/// What an incoming topic asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Input(Modality),
    Enroll(String),
    Forget(String),
    /// `query`: search the semantic index.
    Query,
    /// `zero_shot/set`: replace the zero-shot words.
    SetWords,
    Unknown(String),
}

impl Topics {
    pub fn new(prefix: &str, device_id: &str) -> Topics {
        Topics {
            base: format!("{}/{device_id}", prefix.trim_end_matches('/')),
        }
    }

    pub fn at(&self, suffix: &str) -> String {
        format!("{}/{suffix}", self.base)
    }

    pub fn embedding(&self, m: Modality) -> String {
        self.at(&format!("embedding/{m}"))
    }

    pub fn available(&self) -> String {
        self.at("available")
    }

    /// Filters the daemon subscribes to. Multi-level, so that a mistyped deeper topic
    /// (`in/text/x`) is answered on `error` rather than silently unheard. `query` and
    /// `zero_shot/set` are exact: their answers go to `query/result` and `zero_shot/words`.
    pub fn subscriptions(&self) -> [String; 5] {
        [
            self.at("in/#"),
            self.at("enroll/#"),
            self.at("forget/#"),
            self.at("query"),
            self.at("zero_shot/set"),
        ]
    }

    pub fn route(&self, topic: &str) -> Route {
        let Some(rest) = topic
            .strip_prefix(&self.base)
            .and_then(|r| r.strip_prefix('/'))
        else {
            return Route::Unknown(topic.to_owned());
        };
        if rest == "query" {
            return Route::Query;
        }
        match rest.split_once('/') {
            Some(("zero_shot", "set")) => Route::SetWords,
            Some(("in", "text")) => Route::Input(Modality::Text),
            Some(("in", "image")) => Route::Input(Modality::Vision),
            Some(("in", "audio")) => Route::Input(Modality::Audio),
            Some(("enroll", label)) if is_label(label) => Route::Enroll(label.to_owned()),
            Some(("forget", label)) if is_label(label) => Route::Forget(label.to_owned()),
            _ => Route::Unknown(topic.to_owned()),
        }
    }
}

/// One topic level: `enroll/a/b` is not the label `a/b`.
fn is_label(label: &str) -> bool {
    !label.is_empty() && !label.contains('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_route_by_suffix() {
        let t = Topics::new("edgefuse", "pi");
        assert_eq!(
            t.embedding(Modality::Vision),
            "edgefuse/pi/embedding/vision"
        );
        assert_eq!(
            t.route("edgefuse/pi/in/image"),
            Route::Input(Modality::Vision)
        );
        assert_eq!(t.route("edgefuse/pi/in/text"), Route::Input(Modality::Text));
        assert_eq!(
            t.route("edgefuse/pi/enroll/kitchen"),
            Route::Enroll("kitchen".into())
        );
        assert_eq!(
            t.route("edgefuse/pi/forget/kitchen"),
            Route::Forget("kitchen".into())
        );
        assert!(matches!(t.route("edgefuse/pi/in/video"), Route::Unknown(_)));
        assert!(matches!(
            t.route("edgefuse/pi/in/text/x"),
            Route::Unknown(_)
        ));
        assert!(matches!(
            t.route("edgefuse/pi/enroll/a/b"),
            Route::Unknown(_)
        ));
        assert!(matches!(t.route("edgefuse/pi/forget/"), Route::Unknown(_)));
        assert_eq!(t.route("edgefuse/pi/query"), Route::Query);
        assert_eq!(t.route("edgefuse/pi/zero_shot/set"), Route::SetWords);
        assert!(matches!(
            t.route("edgefuse/pi/query/result"),
            Route::Unknown(_)
        ));
        assert!(matches!(
            t.route("edgefuse/other/in/text"),
            Route::Unknown(_)
        ));
    }
}
