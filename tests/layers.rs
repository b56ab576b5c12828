//! The layers of `src/` (see `lib.rs`): a module uses only modules of its own layer or below,
//! and no two modules use each other, directly or round about. Read from the source itself:
//! every `crate::<module>` a file names outside comments.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each top-level module and its layer, lowest first.
const LAYERS: &[(&str, u8)] = &[
    // values and pure rules every layer shares
    ("domain", 0),
    ("trading", 0),
    ("metrics", 0),
    ("ratelimit", 0),
    ("security", 1),
    // the records and the settings they carry
    ("model", 2),
    // their storage, and what a delivery's body is made from
    ("store", 3),
    ("render", 3),
    ("exchange", 3),
    ("deliver", 4),
    ("registry", 5),
    ("orders", 5),
    // the pipeline stages
    ("ingest", 6),
    ("dispatch", 6),
    // what operators do with records, for every edge
    ("service", 7),
    // the edges: configuration, HTTP, the process, and the commands
    ("config", 8),
    ("proxy", 8),
    ("tls", 8),
    ("api", 9),
    ("ui", 9),
    ("server", 9),
    ("app", 10),
    ("bench", 11),
    ("client", 11),
    ("tools", 11),
    ("setup", 11),
    ("cli", 11),
];

/// Uses that still reach up a layer, each with why; the list only shrinks.
const KNOWN: &[(&str, &str)] = &[];

fn layer(module: &str) -> u8 {
    LAYERS
        .iter()
        .find(|(m, _)| *m == module)
        .unwrap_or_else(|| panic!("src/{module} has no layer in tests/layers.rs"))
        .1
}

/// Top-level module → the modules its files name.
fn uses() -> BTreeMap<String, BTreeSet<String>> {
    let mut found: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let relative = path
            .strip_prefix(Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
            .unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        let module = first.to_str().unwrap().trim_end_matches(".rs").to_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            assert!(
                !line.contains("crate::{"),
                "{}: name one module per `use crate::…` so that its layer can be read",
                relative.display()
            );
            for (i, _) in line.match_indices("crate::") {
                let name: String = line[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    found.entry(module.clone()).or_default().insert(name);
                }
            }
        }
    }
    found
}

#[test]
fn no_module_uses_a_module_of_a_higher_layer() {
    let mut upward = Vec::new();
    for (module, used) in uses() {
        for other in used {
            if layer(&other) > layer(&module) && !KNOWN.contains(&(module.as_str(), other.as_str()))
            {
                upward.push(format!("{module} uses {other}"));
            }
        }
    }
    assert!(upward.is_empty(), "uses that reach up a layer: {upward:?}");
}

#[test]
fn the_known_exceptions_are_still_there_and_no_module_uses_itself_round_about() {
    let graph = uses();
    for (module, other) in KNOWN {
        assert!(
            graph.get(*module).is_some_and(|u| u.contains(*other)),
            "{module} no longer uses {other}: take it off the KNOWN list"
        );
    }
    // Depth-first search for a cycle, not counting the known exceptions.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(node) {
            return;
        }
        if let Some(at) = path.iter().position(|p| p == node) {
            panic!("a cycle: {:?} -> {node}", &path[at..]);
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if !KNOWN.contains(&(node, next.as_str())) {
                visit(next, graph, path, done);
            }
        }
        path.pop();
        done.insert(node.to_owned());
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        visit(module, &graph, &mut Vec::new(), &mut done);
    }
}
