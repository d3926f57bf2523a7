//! The shim's layers depend one way. This reads the shim's sources, builds the graph of
//! its top-level modules from their `crate::` paths, and fails on a cycle (naming the
//! modules and the imports that close it) and on any import of a module from a lower
//! layer into a higher one (`LAYERS`, lowest first). A new top-level module must be
//! placed in `LAYERS`; the map for newcomers is `shim/ARCHITECTURE.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level modules of `shim/src`, lowest layer first: each may import only the
/// ones before it.
const LAYERS: &[&str] = &[
    "predict",  // the predictors: a pure leaf
    "base",     // the shim's own primitives
    "config",   // the environment's settings
    "stats",    // the stats page
    "tracking", // what is tracked
    "engine",   // the snapshot engine and its threads
    "prefetch", // the prefetch thread
    "service",  // snapshot requests, the epoch thread, the control socket
    "host",     // the interposed calls
    "runtime",  // load, fork, exit
];

/// An import: which file names which top-level module.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Import {
    file: String,
    target: String,
}

/// The graph: for each top-level module, the modules it imports, each with the files
/// that do.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

/// The top-level module a file under `src` belongs to (`None` for the crate root).
fn top_level(rel: &Path) -> Option<String> {
    let mut parts = rel.components();
    let first = parts.next()?.as_os_str().to_string_lossy().into_owned();
    if parts.next().is_some() {
        return Some(first);
    }
    let stem = first.strip_suffix(".rs")?.to_string();
    (stem != "lib").then_some(stem)
}

/// The first segments of the `crate::` paths in `source` (comments left out; every
/// item of a `crate::{a, b::c}` group counted).
fn crate_imports(source: &str) -> BTreeSet<String> {
    let code: String = source
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut end = group.len();
            for (j, ch) in group.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    end = j;
                    break;
                }
            }
            let mut level = 0;
            let mut item = String::new();
            for ch in group[..end].chars().chain(std::iter::once(',')) {
                match ch {
                    '{' => level += 1,
                    '}' => level -= 1,
                    ',' if level == 0 => {
                        out.extend(first_segment(item.trim()));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(ch);
            }
        } else {
            out.extend(first_segment(rest));
        }
    }
    out
}

/// The lowercase identifier `s` starts with (module names; items of the crate root such
/// as `ALLOCATOR` are not modules).
fn first_segment(s: &str) -> Option<String> {
    let name: String = s
        .chars()
        .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
        .collect();
    (!name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit())).then_some(name)
}

/// Every `.rs` file under `dir`, with its path relative to `root`.
fn sources(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, String)>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            out.push((path.strip_prefix(root).unwrap().to_path_buf(), text));
        }
    }
}

/// The graph of the top-level modules of the files given.
fn graph(files: &[(PathBuf, String)]) -> Graph {
    let mut g = Graph::new();
    for (rel, text) in files {
        let Some(from) = top_level(rel) else { continue };
        let node = g.entry(from.clone()).or_default();
        for target in crate_imports(text) {
            if target != from {
                node.entry(target)
                    .or_default()
                    .insert(rel.display().to_string());
            }
        }
    }
    g
}

/// The cycles of `g`: its strongly connected components of more than one module
/// (Tarjan's algorithm), each sorted.
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    struct State<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        let targets: Vec<&'a str> =
            s.g.get(v)
                .map(|t| t.keys().map(String::as_str).collect())
                .unwrap_or_default();
        for w in targets {
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.out.push(component);
            }
        }
    }
    let mut s = State {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

/// The imports that point up or sideways in `LAYERS`, and the modules not placed in it.
fn layer_violations(g: &Graph) -> (Vec<Import>, Vec<String>) {
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    let mut up = Vec::new();
    let mut unplaced = BTreeSet::new();
    for (from, targets) in g {
        let Some(rf) = rank(from) else {
            unplaced.insert(from.clone());
            continue;
        };
        for (target, files) in targets {
            match rank(target) {
                None => {
                    unplaced.insert(target.clone());
                }
                Some(rt) if rt >= rf => {
                    for file in files {
                        up.push(Import {
                            file: file.clone(),
                            target: target.clone(),
                        });
                    }
                }
                Some(_) => {}
            }
        }
    }
    (up, unplaced.into_iter().collect())
}

fn describe_cycle(g: &Graph, cycle: &[String]) -> String {
    let mut lines = vec![format!("cycle between {}:", cycle.join(", "))];
    for from in cycle {
        for (target, files) in &g[from] {
            if cycle.contains(target) {
                let files: Vec<&str> = files.iter().map(String::as_str).collect();
                lines.push(format!("  {from} -> {target} (in {})", files.join(", ")));
            }
        }
    }
    lines.join("\n")
}

#[test]
fn the_shims_top_level_modules_depend_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &src, &mut files);
    assert!(
        files.len() > 20,
        "read only {} files from {}",
        files.len(),
        src.display()
    );
    let g = graph(&files);
    let found = cycles(&g);
    assert!(
        found.is_empty(),
        "import cycles between the shim's top-level modules:\n{}",
        found
            .iter()
            .map(|c| describe_cycle(&g, c))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let (up, unplaced) = layer_violations(&g);
    assert!(
        unplaced.is_empty(),
        "top-level modules not placed in LAYERS (shim/tests/layers.rs): {unplaced:?}"
    );
    assert!(
        up.is_empty(),
        "imports from a layer into one at or above it (LAYERS, lowest first: {LAYERS:?}):\n{}",
        up.iter()
            .map(|i| format!("  {} imports crate::{}", i.file, i.target))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Issue 13: at most 8 files at the root of shim/src.
    let root_files = files
        .iter()
        .filter(|(p, _)| p.components().count() == 1)
        .count();
    assert!(
        root_files <= 8,
        "{root_files} .rs files at the root of shim/src"
    );
}

#[test]
fn a_cycle_and_an_upward_import_are_caught_and_named() {
    let files = vec![
        (
            PathBuf::from("engine/fault.rs"),
            "use crate::base::sys;\nuse crate::{service::epoch, stats};".to_string(),
        ),
        (
            PathBuf::from("service/epoch.rs"),
            "// crate::host in a comment is no import\nlet x = crate::engine::now();".to_string(),
        ),
        (PathBuf::from("base/sys.rs"), String::new()),
        (
            PathBuf::from("stats.rs"),
            "crate::base::sys::errno()".to_string(),
        ),
        (
            PathBuf::from("lib.rs"),
            "crate::runtime::on_load".to_string(),
        ),
    ];
    let g = graph(&files);
    assert_eq!(
        g["engine"].keys().collect::<Vec<_>>(),
        ["base", "service", "stats"]
    );
    assert!(!g.contains_key("lib"), "the crate root is no module");
    let found = cycles(&g);
    assert_eq!(
        found,
        vec![vec!["engine".to_string(), "service".to_string()]]
    );
    let text = describe_cycle(&g, &found[0]);
    assert!(
        text.contains("engine -> service (in engine/fault.rs)"),
        "{text}"
    );
    let (up, unplaced) = layer_violations(&g);
    assert!(unplaced.is_empty());
    assert_eq!(
        up,
        vec![Import {
            file: "engine/fault.rs".into(),
            target: "service".into()
        }]
    );
}
