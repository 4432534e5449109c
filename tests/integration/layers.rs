//! No module imports one above it in the data flow (issue 12). [`LAYERS`] is the order, bottom
//! to top, as README.md's layout section states it. The check reads every file under `src/`,
//! maps it to its top-level module and collects the modules each line reaches: `crate::<m>`
//! anywhere outside comments (strings included: serde's `serialize_with = "crate::…"` is a
//! dependency too), `use crate::{a, b::c}` groups, `super::` chains that climb out of the
//! module, and `edgefuse::<m>` in the binary's `main.rs`. The checker is first tried on a
//! made-up tree with known offences, so it cannot pass vacuously.

use std::collections::BTreeSet;
use std::path::Path;

use crate::util::repo;

/// The layers, bottom → top: a module may use the modules listed before it, never one after.
/// `main` is the binary (`src/main.rs`); `src/lib.rs` only declares the tree.
const LAYERS: &[&str] = &[
    "error",
    "types",
    "atomic_file",
    "samples",
    "config",
    "manifest",
    "cpu",
    "logging",
    "preprocess",
    "encoders",
    "semantic",
    "stats",
    "pipeline",
    "fusion",
    "shared_space",
    "mqtt",
    "sinks",
    "sources",
    "systemd",
    "reload",
    "topology",
    "signals",
    "app",
    "fuzz_entry",
    "cli",
    "commands",
    "main",
];

/// One module reached from a file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Reference {
    file: String,
    line: usize,
    from: String,
    to: String,
}

/// `code`: comments blanked (strings kept, they can name paths); `bare`: comments, strings and
/// character literals blanked (for braces and `mod` blocks). Both keep every byte's offset and
/// every newline.
fn strip(src: &str) -> (Vec<u8>, Vec<u8>) {
    let s = src.as_bytes();
    let mut code = s.to_vec();
    let mut bare = s.to_vec();
    let blank = |v: &mut Vec<u8>, from: usize, to: usize| {
        for b in &mut v[from..to] {
            if *b != b'\n' {
                *b = b' ';
            }
        }
    };
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < s.len() {
        let rest = &s[i..];
        if rest.starts_with(b"//") {
            let end = s[i..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(s.len(), |p| i + p);
            blank(&mut code, i, end);
            blank(&mut bare, i, end);
            i = end;
        } else if rest.starts_with(b"/*") {
            let (mut depth, mut j) = (1, i + 2);
            while j < s.len() && depth > 0 {
                if s[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if s[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            blank(&mut code, i, j);
            blank(&mut bare, i, j);
            i = j;
        } else if s[i] == b'r'
            && (i == 0 || !ident(s[i - 1]) || (s[i - 1] == b'b' && (i < 2 || !ident(s[i - 2]))))
            && s[i + 1..].iter().take_while(|&&b| b == b'#').count() < s.len() - i - 1
            && s[i + 1 + s[i + 1..].iter().take_while(|&&b| b == b'#').count()] == b'"'
        {
            // A raw string: r"…", r#"…"#, br"…".
            let hashes = s[i + 1..].iter().take_while(|&&b| b == b'#').count();
            let open = i + 2 + hashes;
            let mut close = vec![b'"'];
            close.extend(std::iter::repeat_n(b'#', hashes));
            let end = s[open..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(s.len(), |p| open + p + close.len());
            blank(&mut bare, open, end.saturating_sub(close.len()));
            i = end;
        } else if s[i] == b'"' {
            let mut j = i + 1;
            while j < s.len() && s[j] != b'"' {
                j += if s[j] == b'\\' { 2 } else { 1 };
            }
            blank(&mut bare, i + 1, j.min(s.len()));
            i = j + 1;
        } else if s[i] == b'\'' {
            // A character literal ('x', '\n', '"'), or else a lifetime or label ('a).
            let end = if s.get(i + 1) == Some(&b'\\') {
                // The escaped character itself may be a quote ('\'').
                s.get(i + 3..)
                    .and_then(|t| t.iter().position(|&b| b == b'\''))
                    .map(|p| i + 3 + p)
            } else {
                let width = s[i + 1..]
                    .iter()
                    .skip(1)
                    .take_while(|&&b| b & 0xC0 == 0x80)
                    .count();
                (s.get(i + 2 + width) == Some(&b'\'')).then_some(i + 2 + width)
            };
            match end {
                Some(e) => {
                    blank(&mut bare, i + 1, e);
                    i = e + 1;
                }
                None => i += 1,
            }
        } else {
            i += 1;
        }
    }
    (code, bare)
}

/// The module path of a file under `src/` (`config/components.rs` → `[config, components]`,
/// `pipeline/mod.rs` → `[pipeline]`); `None` for `lib.rs`.
fn module_path(rel: &str) -> Option<Vec<String>> {
    let mut parts: Vec<String> = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(str::to_owned)
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    (parts != ["lib"]).then_some(parts)
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn skip_space(v: &[u8], mut i: usize) -> usize {
    while i < v.len() && v[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

fn ident_at(v: &[u8], i: usize) -> String {
    let n = v[i.min(v.len())..]
        .iter()
        .take_while(|&&b| is_ident(b))
        .count();
    String::from_utf8_lossy(&v[i..i + n]).into_owned()
}

/// The first identifier of each item of the `{…}` group opening at `v[open]`.
fn group_heads(v: &[u8], open: usize) -> Vec<String> {
    let mut heads = Vec::new();
    let (mut depth, mut expect, mut i) = (0usize, true, open);
    while i < v.len() {
        match v[i] {
            b'{' => {
                depth += 1;
                expect = depth == 1;
            }
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            b',' if depth == 1 => expect = true,
            b if expect && is_ident(b) => {
                heads.push(ident_at(v, i));
                expect = false;
            }
            _ => {}
        }
        i += 1;
    }
    heads
}

/// The modules outside its own that each line of one file reaches. `rel` is the path under
/// `src/`.
fn references(rel: &str, src: &str) -> Vec<Reference> {
    let Some(path) = module_path(rel) else {
        return Vec::new();
    };
    let from = path[0].clone();
    let (code, bare) = strip(src);
    let line_of = |at: usize| 1 + code[..at].iter().filter(|&&b| b == b'\n').count();
    let mut out = Vec::new();
    let mut reach = |at: usize, to: String| {
        if !to.is_empty() && to != from && to != "self" && to != "super" {
            out.push(Reference {
                file: format!("src/{rel}"),
                line: line_of(at),
                from: from.clone(),
                to,
            });
        }
    };
    // `crate::m`, `crate::{a, b}` (and `edgefuse::m` in the binary), strings included.
    let mut roots = vec!["crate::"];
    if rel == "main.rs" {
        roots.push("edgefuse::");
    }
    for root in roots {
        for at in find_all(&code, root.as_bytes()) {
            if at > 0 && (is_ident(code[at - 1]) || code[at - 1] == b'$' || code[at - 1] == b':') {
                continue;
            }
            let j = skip_space(&code, at + root.len());
            if code.get(j) == Some(&b'{') {
                for head in group_heads(&code, j) {
                    reach(at, head);
                }
            } else {
                reach(at, ident_at(&code, j));
            }
        }
    }
    // `super::` chains, against the module path at that point (inline `mod x {` blocks count).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bare.len() {
        match bare[i] {
            b'{' => depth += 1,
            b'}' => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|&(_, d)| d == depth) {
                    inline.pop();
                }
            }
            b'm' if bare[i..].starts_with(b"mod ") && (i == 0 || !is_ident(bare[i - 1])) => {
                let n = skip_space(&bare, i + 4);
                let name = ident_at(&bare, n);
                let after = skip_space(&bare, n + name.len());
                if bare.get(after) == Some(&b'{') {
                    inline.push((name, depth));
                }
            }
            b's' if bare[i..].starts_with(b"super::")
                && (i == 0 || !(is_ident(bare[i - 1]) || bare[i - 1] == b':')) =>
            {
                let (mut n, mut j) = (0, i);
                while bare[j..].starts_with(b"super::") {
                    n += 1;
                    j = skip_space(&bare, j + "super::".len());
                }
                if n == path.len() + inline.len() {
                    if bare.get(j) == Some(&b'{') {
                        for head in group_heads(&bare, j) {
                            reach(i, head);
                        }
                    } else {
                        reach(i, ident_at(&bare, j));
                    }
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out.sort();
    out.dedup();
    out
}

fn find_all(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    hay.windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

/// Every offence in `files` (`(path under src/, text)`) against `layers`, one line each:
/// modules missing from the list, references to no listed module, and upward imports.
fn offences(files: &[(String, String)], layers: &[&str]) -> (Vec<String>, Vec<Reference>) {
    let rank = |m: &str| layers.iter().position(|l| *l == m);
    let mut bad = Vec::new();
    let mut all = Vec::new();
    for (rel, text) in files {
        let Some(path) = module_path(rel) else {
            continue;
        };
        if rank(&path[0]).is_none() {
            bad.push(format!(
                "src/{rel}: module `{}` is not in the layer list",
                path[0]
            ));
            continue;
        }
        for r in references(rel, text) {
            let line = text.lines().nth(r.line - 1).unwrap_or("").trim();
            match (rank(&r.from), rank(&r.to)) {
                (_, None) => bad.push(format!(
                    "{}:{}: `{}` names `{}`, which is no module in the layer list: {line}",
                    r.file, r.line, r.from, r.to
                )),
                (Some(f), Some(t)) if t > f => bad.push(format!(
                    "{}:{}: `{}` imports `{}`, which is above it: {line}",
                    r.file, r.line, r.from, r.to
                )),
                _ => {}
            }
            all.push(r);
        }
    }
    (bad, all)
}

fn read_tree(dir: &Path, base: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            read_tree(&p, base, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let rel = p
                .strip_prefix(base)
                .expect("under src/")
                .to_string_lossy()
                .replace('\\', "/");
            let text =
                std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            out.push((rel, text));
        }
    }
}

#[test]
fn the_checker_finds_every_kind_of_upward_import_in_a_made_up_tree() {
    let files: Vec<(String, String)> = [
        (
            "low.rs",
            "pub fn f() {}\nfn l<'a>(x: &'a str) -> &'a str { crate::top::y(x) }\n\
             fn n() { crate::nope::g() }\n",
        ),
        (
            "mid/mod.rs",
            "use crate::low::f;\nuse crate::{low, top::g};\n// crate::top in a comment\n\
             /* crate::top\n */ fn x() { let s = \"mqtt://host\"; crate::top::h(); }\n\
             mod inner;\n",
        ),
        (
            "mid/inner.rs",
            "use super::helper;\nuse super::super::top::T;\n\
             #[serde(serialize_with = \"crate::top::ser\")]\nstruct S;\nmod tests {\n    \
             use super::*;\n    use super::super::super::low::f;\n    \
             use super::super::super::{low, top};\n}\nfn c() -> char { '\"' }\n\
             use crate::top::Z;\nconst R: &str = r#\"{\"#;\nuse super::super::{low::f, top};\n",
        ),
        ("top.rs", "use crate::mid::x;\nuse super::low;\n"),
        ("stray.rs", "use crate::low;\n"),
        ("lib.rs", "pub mod low;\nuse crate::top;\n"),
    ]
    .into_iter()
    .map(|(p, t)| (p.to_owned(), t.to_owned()))
    .collect();
    let (bad, all) = offences(&files, &["low", "mid", "top"]);
    let found: BTreeSet<(String, usize, String)> = bad
        .iter()
        .map(|m| {
            let (loc, rest) = m.split_once(": ").expect("file:line: message");
            let (file, line) = loc.rsplit_once(':').unwrap_or((loc, "0"));
            let to = rest
                .split('`')
                .nth(3)
                .map_or_else(|| "-".to_owned(), str::to_owned);
            (file.to_owned(), line.parse().unwrap_or(0), to)
        })
        .collect();
    let expected: BTreeSet<(String, usize, String)> = [
        ("src/low.rs", 2, "top"),
        ("src/low.rs", 3, "nope"),
        ("src/mid/mod.rs", 2, "top"),
        ("src/mid/mod.rs", 5, "top"),
        ("src/mid/inner.rs", 2, "top"),
        ("src/mid/inner.rs", 3, "top"),
        ("src/mid/inner.rs", 8, "top"),
        ("src/mid/inner.rs", 11, "top"),
        ("src/mid/inner.rs", 13, "top"),
        ("src/stray.rs", 0, "-"),
    ]
    .into_iter()
    .map(|(f, l, t)| (f.to_owned(), l, t.to_owned()))
    .collect();
    assert_eq!(found, expected, "{bad:#?}");
    // Downward imports are seen too, not merely let through.
    let seen = |file: &str, line: usize, to: &str| {
        all.iter()
            .any(|r| r.file == file && r.line == line && r.to == to)
    };
    assert!(seen("src/mid/mod.rs", 1, "low") && seen("src/mid/mod.rs", 2, "low"));
    assert!(seen("src/mid/inner.rs", 7, "low") && seen("src/top.rs", 1, "mid"));
    assert!(seen("src/top.rs", 2, "low"));
    // Nor does a message come without its line.
    assert!(bad
        .iter()
        .any(|m| m.contains("src/mid/mod.rs:5: `mid` imports `top`")
            && m.ends_with("crate::top::h(); }")));
}

#[test]
fn no_module_imports_one_above_it() {
    let src = repo().join("src");
    let mut files = Vec::new();
    read_tree(&src, &src, &mut files);
    let (bad, all) = offences(&files, LAYERS);
    assert!(
        bad.is_empty(),
        "imports against the layer order (tests/integration/layers.rs, README.md):\n{}",
        bad.join("\n")
    );
    // The tree was read and its imports seen: every module is imported by another, but for
    // the two entry points nothing in the crate calls (the binary and the fuzz targets' door).
    let used: BTreeSet<&str> = all.iter().map(|r| r.to.as_str()).collect();
    assert!(all.len() > 200, "only {} references found", all.len());
    for l in LAYERS {
        assert_eq!(
            used.contains(l),
            !["main", "fuzz_entry"].contains(l),
            "`{l}`: imported by another module?"
        );
    }
    // Every module the crate declares is placed, and nothing else.
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs");
    let declared: BTreeSet<&str> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';'))
        .chain(["main"])
        .collect();
    assert_eq!(declared, LAYERS.iter().copied().collect::<BTreeSet<_>>());
}

#[test]
fn the_readme_states_the_same_layer_order() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let order = LAYERS
        .iter()
        .map(|l| format!("`{l}`"))
        .collect::<Vec<_>>()
        .join(" → ");
    assert!(
        readme.contains(&order),
        "README.md should state the layer order as\n{order}"
    );
}

/// Issue 12: no file over ~600 lines without a reason stated at its top (`// Over 600 lines…`,
/// before the module's documentation; tests beside the code count).
#[test]
fn every_file_over_600_lines_says_why_at_its_top() {
    let src = repo().join("src");
    let mut files = Vec::new();
    read_tree(&src, &src, &mut files);
    let long: Vec<&(String, String)> = files
        .iter()
        .filter(|(_, t)| t.lines().count() > 600)
        .collect();
    assert!(!long.is_empty(), "no long file found: is src/ read?");
    let silent: Vec<String> = long
        .iter()
        .filter(|(_, t)| !t.starts_with("// Over 600 lines"))
        .map(|(rel, t)| format!("src/{rel} ({} lines)", t.lines().count()))
        .collect();
    assert!(
        silent.is_empty(),
        "over 600 lines without `// Over 600 lines: <reason>` on the first line:\n{}",
        silent.join("\n")
    );
}
