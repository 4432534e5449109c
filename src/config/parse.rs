//! Parse-level problems, all at once. serde stops at the first unknown key or wrong type; to
//! report the rest too, the offending key is dropped from the parsed TOML document and the
//! document deserialized again, until it parses or nothing more can be dropped. The keys that
//! did parse are then validated as usual, so one typo does not hide the next problem.

use serde_path_to_error::Segment;

use super::{Config, ConfigProblem};

/// At most this many parse-level problems per file (each costs one more deserialization).
const MAX_PARSE_PROBLEMS: usize = 32;

/// Every problem of a `text` that did not deserialize; `first` is serde's first error, reported
/// with its line.
pub(super) fn problems(text: &str, first: &toml::de::Error) -> Vec<ConfigProblem> {
    let mut problems = vec![super::toml_problem(first, text)];
    // A TOML syntax error: there is no document to go on with.
    let Ok(mut doc) = text.parse::<toml::Table>() else {
        return problems;
    };
    for _ in 0..MAX_PARSE_PROBLEMS {
        let err =
            match serde_path_to_error::deserialize::<_, Config>(toml::Value::Table(doc.clone())) {
                Ok(config) => {
                    // What is left parses: its own problems are worth reporting too.
                    problems.extend(config.problems());
                    break;
                }
                Err(e) => e,
            };
        let message = err.inner().message().to_owned();
        let Some(keys) = offending_keys(err.path(), &message) else {
            break;
        };
        if !remove(&mut doc, &keys) {
            break;
        }
        // serde's first error comes again here (the document's key order may differ): once.
        let path = keys.join(".");
        let seen = problems.iter().any(|p| {
            let key = p.path.split(" (line").next().unwrap_or_default();
            p.message == message && (path.starts_with(key) || key.starts_with(path.as_str()))
        });
        if !seen {
            problems.push(ConfigProblem {
                path: located(text, &keys),
                message,
            });
        }
    }
    problems
}

/// The table keys leading to the problem: the path serde was at (with the unknown key itself
/// for an unknown field). Array indices end the path (the whole array is dropped).
fn offending_keys(path: &serde_path_to_error::Path, message: &str) -> Option<Vec<String>> {
    let mut keys = Vec::new();
    for segment in path.iter() {
        match segment {
            Segment::Map { key } => keys.push(key.clone()),
            Segment::Seq { .. } | Segment::Enum { .. } | Segment::Unknown => break,
        }
    }
    // serde_path_to_error usually has the unknown key in the path already; add it if not.
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let field = rest.split('`').next()?;
        if keys.last().map(String::as_str) != Some(field) {
            keys.push(field.to_owned());
        }
    }
    (!keys.is_empty()).then_some(keys)
}

/// Drop `keys` from `doc`; false when it is not there.
fn remove(doc: &mut toml::Table, keys: &[String]) -> bool {
    let Some((last, parents)) = keys.split_last() else {
        return false;
    };
    let mut table = doc;
    for k in parents {
        match table.get_mut(k) {
            Some(toml::Value::Table(t)) => table = t,
            _ => return false,
        }
    }
    table.remove(last).is_some()
}

/// `a.b.c (line N)`: the line of `c = …` inside `[a.b]` when it can be found.
fn located(text: &str, keys: &[String]) -> String {
    let path = keys.join(".");
    let Some((key, parents)) = keys.split_last() else {
        return path;
    };
    let header = format!("[{}]", parents.join("."));
    let mut in_table = parents.is_empty();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.starts_with('[') {
            in_table = l == header;
        } else if in_table
            && l.strip_prefix(key.as_str())
                .is_some_and(|r| r.trim_start().starts_with('='))
        {
            return format!("{path} (line {})", i + 1);
        }
    }
    path
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    #[test]
    fn every_unknown_key_and_bad_value_is_reported_not_only_the_first() {
        let toml = "[encoders.text]\nmax_lenght = 3\nmax_batch = \"many\"\n\
                    [mqtt]\nqos = 7\nbrokr = \"x\"\n";
        let err = Config::from_toml(toml, "t.toml").unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "encoders.text.max_lenght (line 2)",
            "encoders.text.max_batch (line 3)",
            "mqtt.brokr (line 6)",
            // A semantic problem of what did parse comes with them.
            "mqtt.qos",
        ] {
            assert!(paths.contains(&want), "{want} missing from {paths:?}");
        }
        assert_eq!(err.problems.len(), 4, "{err}");
    }

    #[test]
    fn a_syntax_error_is_reported_alone() {
        let err = Config::from_toml("[mqtt\nqos = 1\n", "t.toml").unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
    }
}
