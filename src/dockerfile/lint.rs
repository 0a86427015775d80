//! Warnings about a Dockerfile that parses but probably does not say what was meant: a
//! `FROM`, `COPY --from` or mount `from=` that names no stage yet looks like one. Docker takes
//! such a name for an image and tries to pull it (`COPY --from=biuld` is `docker.io/library/biuld`),
//! which fails late or, worse, finds something.

use super::StageGraph;

impl StageGraph {
    /// One warning for each image a stage reads that looks like a misspelt stage name: a bare
    /// name (no registry part, no tag, no digest, as a stage name is written) within one edit
    /// (a letter added, left out, changed, or two swapped) of a stage's name, or equal to the
    /// name of a stage that `FROM` cannot see because it comes later. `FROM node AS node`, a
    /// stage named after its own base image, is what it says.
    pub fn lint_stage_names(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for stage in &self.stages {
            let mut seen: Vec<&str> = Vec::new();
            for image in &stage.images {
                if seen.contains(&image.as_str()) || !bare(image) {
                    continue;
                }
                seen.push(image);
                let lower = image.to_lowercase();
                // A stage never names itself (that would be a cycle), so its own name is left
                // out: `FROM node AS node` is the image.
                let Some(other) = self.stages.iter().find(|s| {
                    s.index != stage.index
                        && s.name
                            .as_deref()
                            .is_some_and(|name| name == lower || one_edit(name, &lower))
                }) else {
                    continue;
                };
                let name = self.name(other.index);
                let mut warning = format!(
                    "stage `{}` (line {}) names `{image}`, which is no stage it can use, so Docker takes it for an image: did you mean `{name}`?",
                    self.name(stage.index),
                    stage.line
                );
                if name == lower {
                    warning.push_str(&format!(
                        "\nnote: `FROM` sees only the stages above it, and stage `{name}` is on line {}",
                        other.line
                    ));
                }
                warnings.push(warning);
            }
        }
        warnings
    }
}

/// Whether `image` is written as a stage name is: no registry or path (`/`), no tag (`:`), no
/// digest (`@`).
fn bare(image: &str) -> bool {
    !image.is_empty() && !image.contains(['/', ':', '@'])
}

/// Whether `a` and `b` differ by exactly one edit: one character added, left out or changed, or
/// two neighbours swapped (`biuld`, `build`).
fn one_edit(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a == b {
        return false;
    }
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let (a, b) = (&a[prefix..], &b[prefix..]);
    match (a.len(), b.len()) {
        (m, n) if m == n => {
            a[1..] == b[1..] || (m >= 2 && a[0] == b[1] && a[1] == b[0] && a[2..] == b[2..])
        }
        (m, n) if m == n + 1 => a[1..] == *b,
        (m, n) if m + 1 == n => *a == b[1..],
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::{one_edit, StageGraph};

    fn lint(text: &str) -> Vec<String> {
        StageGraph::parse(text).unwrap().lint_stage_names()
    }

    #[test]
    fn one_edit_is_one_letter_added_left_out_changed_or_swapped() {
        for (a, b) in [
            ("build", "biuld"),
            ("build", "buld"),
            ("build", "builds"),
            ("build", "guild"),
            ("build", "ubild"),
            ("build", "buidl"),
            ("a", "b"),
            ("", "a"),
        ] {
            assert!(one_edit(a, b), "{a} {b}");
            assert!(one_edit(b, a), "{b} {a}");
        }
        for (a, b) in [
            ("build", "build"),
            ("build", "bilud"),
            ("build", "bu"),
            ("build", "compile"),
            ("ab", "ba c"),
        ] {
            assert!(!one_edit(a, b), "{a} {b}");
        }
    }

    #[test]
    fn a_misspelt_stage_name_is_warned_of_with_the_name_meant() {
        let warnings =
            lint("FROM scratch AS build\nFROM scratch AS runtime\nCOPY --from=biuld /out /out\n");
        assert_eq!(
            warnings,
            ["stage `runtime` (line 2) names `biuld`, which is no stage it can use, so Docker takes it for an image: did you mean `build`?"]
        );
        // A base, a mount's `from=`, and a name that differs in case too.
        let warnings = lint(
            "FROM scratch AS toolchain\nFROM toolchian AS compile\nRUN --mount=type=bind,from=Toolchains,target=/t true\n",
        );
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings
            .iter()
            .all(|w| w.contains("did you mean `toolchain`?")));
    }

    #[test]
    fn a_base_that_names_a_later_stage_is_warned_of() {
        let warnings = lint("FROM build AS runtime\nFROM scratch AS build\n");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].ends_with(
                "did you mean `build`?\nnote: `FROM` sees only the stages above it, and stage `build` is on line 2"
            ),
            "{}",
            warnings[0]
        );
    }

    #[test]
    fn images_that_are_clearly_images_are_not_warned_of() {
        for text in [
            // A registry part, a tag or a digest says it is an image.
            "FROM scratch AS build\nFROM scratch AS runtime\nCOPY --from=biuld:1 /a /a\n",
            "FROM scratch AS build\nFROM scratch AS runtime\nCOPY --from=acme/biuld /a /a\n",
            "FROM scratch AS build\nFROM builds@sha256:0000000000000000000000000000000000000000000000000000000000000000 AS runtime\n",
            // A stage named after its own base image, or nearly.
            "FROM node AS node\nRUN true\n",
            "FROM node AS nodes\nRUN true\n",
            // Far from every stage name.
            "FROM scratch AS build\nFROM alpine AS runtime\nCOPY --from=busybox /bin/busybox /bin/busybox\n",
            // A stage it names, and an index.
            "FROM scratch AS build\nFROM scratch AS runtime\nCOPY --from=build /a /a\nCOPY --from=0 /a /a\n",
        ] {
            assert_eq!(lint(text), Vec::<String>::new(), "{text}");
        }
    }
}
