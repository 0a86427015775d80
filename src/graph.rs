//! The stage graph as a picture, for `cargo xtask docker check --graph mermaid|dot`.
//!
//! Pure: a [`Package`] in, Mermaid or Graphviz text out. Nodes are named `s0`, `s1`, ... after
//! the stage index, never after the stage name, so that no name can clash with a keyword of
//! either language (`end`, `graph`, `node`, ...); names only appear inside quoted labels.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::package::Package;

/// The formats `check --graph` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GraphFormat {
    /// A Mermaid `flowchart`, which GitHub renders inside a ```` ```mermaid ```` fence.
    Mermaid,
    /// A Graphviz `digraph`, for `dot -Tsvg`.
    Dot,
}

/// What a node stands for; decides its label suffix and its colours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The final target.
    Final,
    /// A cached stage other than the target.
    Cached,
    /// Needed by the target or a cached stage, but not cached itself.
    Plain,
    /// Needed by neither the target nor a cached stage: a build never runs it.
    Unused,
}

/// Everything both renderers need, worked out once.
struct Layout {
    /// The package name, the Dot graph's name.
    name: String,
    /// Per stage, in index order: its label and kind.
    nodes: Vec<(String, Kind)>,
    /// The used stages in waves; stages in one wave do not need each other.
    levels: Vec<Vec<usize>>,
    /// Stages outside every wave, in index order.
    unused: Vec<usize>,
    /// `(dependency, dependent)` pairs, by dependent then dependency.
    edges: Vec<(usize, usize)>,
}

impl Layout {
    fn new(package: &Package) -> Layout {
        let graph = &package.graph;
        let n = graph.stages.len();
        // A stage is used when a build runs it: the target, a cached stage (its cache image is
        // pushed), or anything those need.
        let mut used = BTreeSet::new();
        for root in std::iter::once(package.target).chain(package.cached.keys().copied()) {
            if root < n {
                used.insert(root);
                used.extend(graph.ancestors(root).into_iter().filter(|&s| s < n));
            }
        }
        let nodes = (0..n)
            .map(|i| {
                let kind = if i == package.target {
                    Kind::Final
                } else if package.cached.contains_key(&i) {
                    Kind::Cached
                } else if used.contains(&i) {
                    Kind::Plain
                } else {
                    Kind::Unused
                };
                let mut notes = Vec::new();
                if kind == Kind::Final {
                    notes.push("final".to_string());
                }
                if let Some(tag) = package.cached.get(&i) {
                    notes.push(format!("cached: {tag}"));
                }
                if kind == Kind::Unused {
                    notes.push("unused".to_string());
                }
                let mut label = graph.name(i);
                if !notes.is_empty() {
                    let _ = write!(label, " ({})", notes.join(", "));
                }
                (label, kind)
            })
            .collect();
        let used: Vec<usize> = used.into_iter().collect();
        let levels = graph.levels_of(&used);
        let unused = (0..n).filter(|i| !used.contains(i)).collect();
        let edges = graph
            .stages
            .iter()
            .enumerate()
            .flat_map(|(i, stage)| stage.deps.iter().map(move |&dep| (dep, i)))
            .filter(|&(dep, _)| dep < n)
            .collect();
        Layout {
            name: package.config.package.clone(),
            nodes,
            levels,
            unused,
            edges,
        }
    }

    fn kind(&self, stage: usize) -> Kind {
        self.nodes.get(stage).map_or(Kind::Plain, |(_, kind)| *kind)
    }

    fn label(&self, stage: usize) -> &str {
        self.nodes
            .get(stage)
            .map_or("", |(label, _)| label.as_str())
    }

    /// The title of a wave of 2+ stages: their bare names, which the node labels repeat.
    fn parallel_title(&self, package: &Package, wave: &[usize]) -> String {
        let names: Vec<String> = wave.iter().map(|&s| package.graph.name(s)).collect();
        format!("parallel: {}", names.join(", "))
    }
}

/// Renders `package`'s stage graph: one node per stage, an edge from each stage to each stage
/// that needs it (build order), the final target and the cached stages (with their cache tag
/// templates) marked, the stages that can build in parallel grouped, and the stages that
/// neither the target nor a cached stage needs greyed out as unused.
pub fn render(package: &Package, format: GraphFormat) -> String {
    let layout = Layout::new(package);
    match format {
        GraphFormat::Mermaid => mermaid(package, &layout),
        GraphFormat::Dot => dot(package, &layout),
    }
}

fn mermaid(package: &Package, layout: &Layout) -> String {
    let mut out = String::from("flowchart LR\n");
    // Dark text on light fills stays readable in GitHub's dark theme too.
    out.push_str("    classDef final fill:#dcfce7,stroke:#16a34a,stroke-width:3px,color:#14532d\n");
    out.push_str("    classDef cached fill:#dbeafe,stroke:#2563eb,color:#1e3a8a\n");
    out.push_str("    classDef plain fill:#ffffff,stroke:#6b7280,color:#111827\n");
    out.push_str(
        "    classDef unused fill:#f3f4f6,stroke:#9ca3af,color:#9ca3af,stroke-dasharray: 4 4\n",
    );
    let node = |out: &mut String, indent: &str, stage: usize| {
        let _ = writeln!(
            out,
            "{indent}s{stage}[\"{}\"]:::{}",
            mermaid_text(layout.label(stage)),
            class(layout.kind(stage))
        );
    };
    for (level, wave) in layout.levels.iter().enumerate() {
        if let [stage] = wave.as_slice() {
            node(&mut out, "    ", *stage);
            continue;
        }
        // Mermaid places a node in the subgraph that defines it, so each wave's nodes are
        // defined here and nowhere else.
        let _ = writeln!(
            out,
            "    subgraph p{level} [\"{}\"]",
            mermaid_text(&layout.parallel_title(package, wave))
        );
        for &stage in wave {
            node(&mut out, "        ", stage);
        }
        out.push_str("    end\n");
    }
    for &stage in &layout.unused {
        node(&mut out, "    ", stage);
    }
    for &(dep, stage) in &layout.edges {
        let arrow = if layout.kind(stage) == Kind::Unused {
            "-.->"
        } else {
            "-->"
        };
        let _ = writeln!(out, "    s{dep} {arrow} s{stage}");
    }
    out
}

fn dot(package: &Package, layout: &Layout) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", dot_text(&layout.name));
    out.push_str("    rankdir=LR;\n");
    out.push_str("    fontname=\"Helvetica\";\n");
    out.push_str(
        "    node [shape=box, style=\"rounded,filled\", fillcolor=\"#ffffff\", color=\"#6b7280\", fontname=\"Helvetica\"];\n",
    );
    out.push_str("    edge [color=\"#4b5563\"];\n");
    let node = |out: &mut String, indent: &str, stage: usize| {
        let attrs = match layout.kind(stage) {
            Kind::Final => ", fillcolor=\"#dcfce7\", color=\"#16a34a\", penwidth=2",
            Kind::Cached => ", fillcolor=\"#dbeafe\", color=\"#2563eb\"",
            Kind::Plain => "",
            Kind::Unused => {
                ", style=\"rounded,filled,dashed\", fillcolor=\"#f3f4f6\", color=\"#9ca3af\", fontcolor=\"#9ca3af\""
            }
        };
        let _ = writeln!(
            out,
            "{indent}s{stage} [label=\"{}\"{attrs}];",
            dot_text(layout.label(stage))
        );
    };
    for (level, wave) in layout.levels.iter().enumerate() {
        if let [stage] = wave.as_slice() {
            node(&mut out, "    ", *stage);
            continue;
        }
        // Graphviz draws only subgraphs named `cluster*` as boxes.
        let _ = writeln!(out, "    subgraph cluster_p{level} {{");
        let _ = writeln!(
            out,
            "        label=\"{}\";",
            dot_text(&layout.parallel_title(package, wave))
        );
        out.push_str("        style=\"dashed,rounded\";\n");
        out.push_str("        color=\"#9ca3af\";\n");
        out.push_str("        fontcolor=\"#6b7280\";\n");
        let ids: Vec<String> = wave.iter().map(|s| format!("s{s};")).collect();
        let _ = writeln!(out, "        {{rank=same; {}}}", ids.join(" "));
        for &stage in wave {
            node(&mut out, "        ", stage);
        }
        out.push_str("    }\n");
    }
    for &stage in &layout.unused {
        node(&mut out, "    ", stage);
    }
    for &(dep, stage) in &layout.edges {
        let attrs = if layout.kind(stage) == Kind::Unused {
            " [style=dashed, color=\"#9ca3af\"]"
        } else {
            ""
        };
        let _ = writeln!(out, "    s{dep} -> s{stage}{attrs};");
    }
    out.push_str("}\n");
    out
}

fn class(kind: Kind) -> &'static str {
    match kind {
        Kind::Final => "final",
        Kind::Cached => "cached",
        Kind::Plain => "plain",
        Kind::Unused => "unused",
    }
}

/// Text for inside a Mermaid `"..."` label. Stage names and tags cannot hold these characters,
/// but a hand-built graph or a future name rule might: Mermaid reads `#name;` as an entity and
/// `<...>` as HTML, and a `"` would end the label.
fn mermaid_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '#' => out.push_str("#35;"),
            '"' => out.push_str("#quot;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            '&' => out.push_str("#amp;"),
            '`' => out.push_str("#96;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Text for inside a Graphviz `"..."` string: only `"` and `\` are special there (a line break
/// is kept out, as a label would treat `\n` as one anyway).
fn dot_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;
    use crate::config::Config;
    use crate::dockerfile::{Stage, StageGraph};

    const FIVE: &str = "\
FROM scratch AS base
RUN true
FROM base AS compile-a
RUN true
FROM base AS compile-b
RUN true
FROM scratch AS tools
FROM base AS runtime
COPY --from=compile-a /a /a
COPY --from=compile-b /b /b
";

    /// The config tests share (see `config::testing`), with `target` and one `{version}` tag.
    fn config(stages: &[(&str, &str)], target: Option<&str>) -> Config {
        Config {
            target: target.map(str::to_string),
            ..crate::config::testing::config(stages, &["{version}"])
        }
    }

    fn five() -> Package {
        let stages = [
            ("base", "base-{version}"),
            ("compile-a", "compile-a-{branch}"),
            ("compile-b", "compile-b-{branch}"),
        ];
        Package::resolve(config(&stages, Some("runtime")), FIVE).unwrap()
    }

    #[test]
    fn five_stages_mermaid() {
        expect![[r#"
            flowchart LR
                classDef final fill:#dcfce7,stroke:#16a34a,stroke-width:3px,color:#14532d
                classDef cached fill:#dbeafe,stroke:#2563eb,color:#1e3a8a
                classDef plain fill:#ffffff,stroke:#6b7280,color:#111827
                classDef unused fill:#f3f4f6,stroke:#9ca3af,color:#9ca3af,stroke-dasharray: 4 4
                s0["base (cached: base-{version})"]:::cached
                subgraph p1 ["parallel: compile-a, compile-b"]
                    s1["compile-a (cached: compile-a-{branch})"]:::cached
                    s2["compile-b (cached: compile-b-{branch})"]:::cached
                end
                s4["runtime (final, cached: runtime)"]:::final
                s3["tools (unused)"]:::unused
                s0 --> s1
                s0 --> s2
                s0 --> s4
                s1 --> s4
                s2 --> s4
        "#]]
        .assert_eq(&render(&five(), GraphFormat::Mermaid));
    }

    #[test]
    fn five_stages_dot() {
        expect![[r##"
            digraph "service" {
                rankdir=LR;
                fontname="Helvetica";
                node [shape=box, style="rounded,filled", fillcolor="#ffffff", color="#6b7280", fontname="Helvetica"];
                edge [color="#4b5563"];
                s0 [label="base (cached: base-{version})", fillcolor="#dbeafe", color="#2563eb"];
                subgraph cluster_p1 {
                    label="parallel: compile-a, compile-b";
                    style="dashed,rounded";
                    color="#9ca3af";
                    fontcolor="#6b7280";
                    {rank=same; s1; s2;}
                    s1 [label="compile-a (cached: compile-a-{branch})", fillcolor="#dbeafe", color="#2563eb"];
                    s2 [label="compile-b (cached: compile-b-{branch})", fillcolor="#dbeafe", color="#2563eb"];
                }
                s4 [label="runtime (final, cached: runtime)", fillcolor="#dcfce7", color="#16a34a", penwidth=2];
                s3 [label="tools (unused)", style="rounded,filled,dashed", fillcolor="#f3f4f6", color="#9ca3af", fontcolor="#9ca3af"];
                s0 -> s1;
                s0 -> s2;
                s0 -> s4;
                s1 -> s4;
                s2 -> s4;
            }
        "##]]
        .assert_eq(&render(&five(), GraphFormat::Dot));
    }

    #[test]
    fn unnamed_stages() {
        // The last stage is the target; `stage-1` is needed but not cached, `stage-2` unused
        // but built on a used stage.
        let text = "FROM alpine AS base\nFROM base\nFROM base\nFROM scratch\nCOPY --from=1 /x /x\n";
        let package = Package::resolve(config(&[("base", "base")], None), text).unwrap();
        expect![[r#"
            flowchart LR
                classDef final fill:#dcfce7,stroke:#16a34a,stroke-width:3px,color:#14532d
                classDef cached fill:#dbeafe,stroke:#2563eb,color:#1e3a8a
                classDef plain fill:#ffffff,stroke:#6b7280,color:#111827
                classDef unused fill:#f3f4f6,stroke:#9ca3af,color:#9ca3af,stroke-dasharray: 4 4
                s0["base (cached: base)"]:::cached
                s1["stage-1"]:::plain
                s3["stage-3 (final, cached: stage-3)"]:::final
                s2["stage-2 (unused)"]:::unused
                s0 --> s1
                s0 -.-> s2
                s1 --> s3
        "#]]
        .assert_eq(&render(&package, GraphFormat::Mermaid));
        expect![[r##"
            digraph "service" {
                rankdir=LR;
                fontname="Helvetica";
                node [shape=box, style="rounded,filled", fillcolor="#ffffff", color="#6b7280", fontname="Helvetica"];
                edge [color="#4b5563"];
                s0 [label="base (cached: base)", fillcolor="#dbeafe", color="#2563eb"];
                s1 [label="stage-1"];
                s3 [label="stage-3 (final, cached: stage-3)", fillcolor="#dcfce7", color="#16a34a", penwidth=2];
                s2 [label="stage-2 (unused)", style="rounded,filled,dashed", fillcolor="#f3f4f6", color="#9ca3af", fontcolor="#9ca3af"];
                s0 -> s1;
                s0 -> s2 [style=dashed, color="#9ca3af"];
                s1 -> s3;
            }
        "##]]
        .assert_eq(&render(&package, GraphFormat::Dot));
    }

    #[test]
    fn awkward_names_are_escaped() {
        assert_eq!(
            mermaid_text("a\"b#c<d>e&f`g\nh"),
            "a#quot;b#35;c#lt;d#gt;e#amp;f#96;g h"
        );
        assert_eq!(dot_text("a\"b\\c\nd"), "a\\\"b\\\\c d");
    }

    #[test]
    fn hand_built_packages_do_not_panic() {
        let mut package = five();
        let stage = |index: usize, deps: Vec<usize>| Stage {
            index,
            name: Some(format!("end\"{index}")),
            base: "x".to_string(),
            base_stage: None,
            platform: None,
            deps,
            line: 1,
            images: vec![],
            remote: vec![],
            runs: vec![],
            cache_mounts: vec![],
        };
        // A cycle, a dependency past the end, a target past the end, no stages at all.
        package.graph = StageGraph {
            stages: vec![stage(0, vec![1, 9]), stage(1, vec![0])],
            frontend: None,
        };
        package.target = 7;
        for format in [GraphFormat::Mermaid, GraphFormat::Dot] {
            let text = render(&package, format);
            assert!(text.contains("s0") && text.contains("s1") && !text.contains("s9"));
        }
        package.graph = StageGraph {
            stages: vec![],
            frontend: None,
        };
        assert!(render(&package, GraphFormat::Dot).ends_with("}\n"));
        assert!(render(&package, GraphFormat::Mermaid).starts_with("flowchart LR\n"));
    }
}
