//! Heredocs that parse-dockerfile cannot read yet (`RUN cat <<EOF > f`, several heredocs in one
//! `RUN`): masked before a second parse, since the stage graph needs nothing from their bodies.

use super::args::split_words;

/// A copy of `text` in which the heredocs of `RUN`, `COPY` and `ADD` (and `ONBUILD` ones) can no
/// longer be seen: each body line becomes an empty line, so line numbers stay, and `<<` on the
/// instruction becomes `__`. The stage graph needs nothing from heredocs.
///
/// `None` when there is no heredoc, or one has no closing line (the parse error then stands).
pub(super) fn mask_heredocs(text: &str) -> Option<String> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let escape = escape_directive(&lines);
    let mut out = String::with_capacity(text.len());
    let mut found = false;
    let mut i = 0;
    while let Some(&line) = lines.get(i) {
        i += 1;
        let trimmed = line.trim_start();
        if trimmed.trim_end().is_empty() || trimmed.starts_with('#') {
            out.push_str(line);
            continue;
        }
        // The whole instruction: continuation lines, and comment or empty lines among them.
        let mut instruction = vec![line];
        let mut logical = String::new();
        let mut current = line;
        'instruction: while let Some(joined) = continued(current, escape) {
            logical.push_str(joined);
            logical.push(' ');
            // The next line that is not empty or a comment goes on with the instruction.
            loop {
                let Some(&next) = lines.get(i) else {
                    break 'instruction;
                };
                i += 1;
                instruction.push(next);
                let next_trimmed = next.trim_start();
                if !(next_trimmed.trim_end().is_empty() || next_trimmed.starts_with('#')) {
                    current = next;
                    break;
                }
            }
        }
        if continued(current, escape).is_none() {
            logical.push_str(current);
        }
        let delimiters = heredoc_delimiters(&logical, escape);
        if delimiters.is_empty() {
            instruction.iter().for_each(|l| out.push_str(l));
            continue;
        }
        found = true;
        instruction
            .iter()
            .for_each(|l| out.push_str(&l.replace("<<", "__")));
        for (strip_tabs, delimiter) in delimiters {
            loop {
                let body = lines.get(i)?;
                i += 1;
                out.push_str(if body.ends_with('\n') { "\n" } else { "" });
                let mut content = body.trim_end_matches(['\n', '\r']);
                if strip_tabs {
                    content = content.trim_start_matches('\t');
                }
                if content == delimiter {
                    break;
                }
            }
        }
    }
    found.then_some(out)
}

/// The line without its continuation escape, if it ends with one (before trailing whitespace).
fn continued(line: &str, escape: char) -> Option<&str> {
    line.trim_end().strip_suffix(escape)
}

/// The `# escape=` parser directive among the first lines; `\` if there is none.
fn escape_directive(lines: &[&str]) -> char {
    for line in lines {
        let Some(comment) = line.strip_prefix('#') else {
            break;
        };
        let comment = comment.trim();
        let Some(key_len) = comment
            .get(..6)
            .filter(|k| k.eq_ignore_ascii_case("escape"))
            .map(str::len)
        else {
            continue;
        };
        let value = comment.get(key_len..).unwrap_or_default().trim_start();
        if let Some(value) = value.strip_prefix('=') {
            return if value.trim() == "`" { '`' } else { '\\' };
        }
    }
    '\\'
}

/// The heredocs an instruction opens, in order, as (strip leading tabs, delimiter), if it is
/// one that takes heredocs. Like BuildKit, a heredoc is a shell word `[n]<<[-]WORD` with
/// `WORD` optionally quoted.
fn heredoc_delimiters(logical: &str, escape: char) -> Vec<(bool, String)> {
    let words = split_words(logical, escape);
    let mut words = words.iter().map(String::as_str);
    let mut keyword = words.next().unwrap_or_default().to_ascii_uppercase();
    if keyword == "ONBUILD" {
        keyword = words.next().unwrap_or_default().to_ascii_uppercase();
    }
    if !matches!(keyword.as_str(), "RUN" | "COPY" | "ADD") {
        return Vec::new();
    }
    words
        .filter_map(|word| {
            let rest = word
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .strip_prefix("<<")?;
            let (strip_tabs, rest) = match rest.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, rest),
            };
            let delimiter: String = rest.chars().filter(|&c| c != '"' && c != '\'').collect();
            (!rest.contains('<') && !delimiter.is_empty()).then_some((strip_tabs, delimiter))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerfile::test_util::*;
    use expect_test::expect;

    #[test]
    fn heredocs_do_not_create_stages() {
        check(
            "FROM alpine AS build\nRUN <<EOF\nFROM evil AS y\nCOPY --from=y / /\nEOF\n\
             COPY <<EOT /etc/motd\nFROM x AS z\nEOT\nCOPY <<-\"EOF\" /x\n\tFROM q AS r\n\tEOF\nFROM build\n",
            expect![[r#"
                0 Some("build") base="alpine" base_stage=None platform=None deps=[] line=1
                1 None base="build" base_stage=Some(0) platform=None deps=[0] line=12
            "#]],
        );
    }

    #[test]
    fn heredocs_parse_dockerfile_does_not_read() {
        // A heredoc after a command word, and two in one `RUN`: BuildKit reads both.
        check(
            "FROM alpine AS a\nRUN cat <<EOF > /x\nFROM evil AS y\nEOF\n\
             RUN <<ONE bash && cat <<-'TWO' \\\n  > /y\nFROM x\nONE\n\t\tFROM z\n\tTWO\n\
             ONBUILD RUN cat <<EOF\nFROM w\nEOF\nFROM a\nCOPY --from=a <<X /dst\nFROM q\nX\n",
            expect![[r#"
                0 Some("a") base="alpine" base_stage=None platform=None deps=[] line=1
                1 None base="a" base_stage=Some(0) platform=None deps=[0] line=14
            "#]],
        );
        // Line numbers after masked heredocs still match the file.
        assert_eq!(
            error("FROM alpine AS a\nRUN cat <<EOF\nx\nEOF\nFROM alpine AS A\n"),
            "line 5: duplicate stage name `a` (lines 1 and 5)"
        );
        assert_eq!(
            error("FROM alpine AS a\nRUN cat <<EOF\nx\nEOF\nCOPY --from=b / /\nFROM a AS b\n"),
            "line 5: dependency cycle between stages `a` -> `b` -> `a`"
        );
        // Never closed: the parser's own error stands.
        assert_eq!(
            error("FROM alpine\nRUN cat <<EOF\nbody\n"),
            "line 3: unknown instruction 'body'"
        );
        assert_eq!(mask_heredocs("FROM a\nRUN echo '<<EOF'\n"), None);
        assert_eq!(
            mask_heredocs("# escape=`\nFROM a\nRUN x `\n# c\n\n  <<E\nbody\nE\nRUN y\n").as_deref(),
            Some("# escape=`\nFROM a\nRUN x `\n# c\n\n  __E\n\n\nRUN y\n")
        );
        assert_eq!(
            heredoc_delimiters("RUN 3<<\"A\" <<-B x<<C <<<D <<", '\\'),
            [(false, "A".to_string()), (true, "B".to_string())]
        );
        assert_eq!(heredoc_delimiters("ENV <<A", '\\'), []);
    }
}
