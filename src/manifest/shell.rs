//! Expressions in shell scripts become references to environment variables.
//!
//! A value from GitHub (a ref, a payload field) must never become shell code, whatever quotes
//! the author wrapped the expression in. So a script's `${{ deployment.ref }}` is never
//! replaced by the ref itself: it is replaced by a reference to a variable (`DROPSHIP_REF`)
//! written so that the shell expands it as one piece of data in the quoting context where the
//! expression stands, and the value travels in the step's environment. The rewritten script
//! is the same text for every deployment; only the environment differs.
//!
//! | where the expression stands | it becomes |
//! |---|---|
//! | unquoted (`echo ${{ x }}`), inside `$( )` or backticks | `"${VAR}"` |
//! | inside double quotes, or an unquoted heredoc (`<<EOF`) | `${VAR}` |
//! | inside single quotes | `'"${VAR}"'` (the quote is closed, the variable double-quoted, the quote reopened) |
//! | a comment | `${VAR}` |
//! | a quoted heredoc (`<<'EOF'`), which expands nothing | refused at validation |
//! | inside `${ }`, an array subscript, or a script using bash arithmetic anywhere (`((`, `$[`, `[[`, `let`, `declare -i`, `[ -v`) | refused at validation |
//! | a script using bash's ANSI-C quoting `$'…'` anywhere | refused at validation |
//!
//! Bash (the `sh` of some systems) evaluates a variable's value as arithmetic in those last
//! places, which runs any `$( )` in it however the reference is quoted, so a script holding an
//! expression may not use them at all. Nor may it use bash's `$'…'` anywhere, in which `\'`
//! does not end the string: the scan does not follow that quoting. A script whose quoting the
//! scan cannot follow to the end is refused too. A script without expressions is returned as
//! written. The scanner follows POSIX `sh` quoting; if it misjudged an exotic construct that
//! still balances, the worst outcome is wrong text or word splitting of a value.

use std::collections::BTreeMap;

use super::expr::{Occurrence, Reference, occurrences, parse_reference};

/// A script with its expressions replaced by variable references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShellScript {
    pub(crate) text: String,
    /// The variables the text refers to, and what each one holds.
    pub(crate) variables: Vec<(String, Reference)>,
}

/// Why an expression cannot stand where it stands: `offset` is its byte offset in the script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScriptError {
    pub(crate) offset: usize,
    pub(crate) message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// Top level, or inside `$( )`: `parens` counts the `(` opened inside it, `cases` the
    /// `case` commands open (whose patterns end with a `)` that closes nothing).
    Unquoted {
        parens: u32,
        closes_on_paren: bool,
        cases: u32,
    },
    Double,
    Single,
    Backtick,
    /// `$(( ))` or bash's `(( ))`: bash evaluates a variable's value there as arithmetic,
    /// which runs `$( )` inside array subscripts, so no expression may stand in one.
    Arithmetic {
        parens: u32,
    },
    /// bash's `[[ ]]`: its `-eq`, `-lt`... evaluate values as arithmetic too.
    Test,
    /// `${ ... }`: bash evaluates substring offsets and array subscripts there as arithmetic.
    Parameter,
}

impl Frame {
    fn unquoted(closes_on_paren: bool) -> Frame {
        Frame::Unquoted {
            parens: 0,
            closes_on_paren,
            cases: 0,
        }
    }
}

#[derive(Debug)]
struct PendingHeredoc {
    delimiter: String,
    quoted: bool,
    strip_tabs: bool,
}

/// Rewrites `script`; an expression that does not parse is left as written (validation
/// reports those). A script with expressions is refused where one stands in arithmetic, or
/// where the scan cannot tell where its quotes, substitutions or heredocs end: there it cannot
/// know what the shell will make of a reference.
pub(crate) fn rewrite(script: &str) -> Result<ShellScript, ScriptError> {
    let found = occurrences(script);
    // Without expressions the scan refuses nothing and copies every byte: nothing to do.
    let Some(first) = found.first() else {
        return Ok(ShellScript {
            text: script.to_string(),
            variables: Vec::new(),
        });
    };
    refuse_unfollowable(script, first)?;
    let mut scan = Scan {
        script,
        bytes: script.as_bytes(),
        expressions: found.iter().peekable(),
        names: Names::default(),
        out: String::with_capacity(script.len() + 16 * found.len()),
        stack: vec![Frame::unquoted(false)],
        pending: Vec::new(),
        unterminated: None,
        glued: usize::MAX,
    };
    let mut i = 0;
    while i < script.len() {
        i = scan.step(i)?;
    }
    scan.finish(first)
}

/// Refuses a script with expressions (`first` is the first) that uses what bash evaluates as
/// arithmetic anywhere, or bash's `$'…'`, in which a backslash escapes the quote (`$'\''` is
/// one `'`): POSIX quoting, which the scan follows, does not know it, and the scan would lose
/// track of what is quoted from there on.
fn refuse_unfollowable(script: &str, first: &Occurrence) -> Result<(), ScriptError> {
    let expression = &script[first.start..first.end];
    if let Some(construct) = bash_arithmetic(script) {
        return Err(ScriptError {
            offset: first.start,
            message: format!(
                "this script uses {construct}, where bash (the `sh` of some systems) evaluates values as arithmetic and runs the `$( )` inside them; a script with `{expression}` may not: pass the value through `env:` and check it is a number before any arithmetic"
            ),
        });
    }
    if script.contains("$'") {
        return Err(ScriptError {
            offset: first.start,
            message: format!(
                "this script uses bash's `$'…'`, in which `\\'` does not end the string: `$'…'` quoting cannot be followed in a script with `{expression}`; write the script without it, or pass the value through `env:`"
            ),
        });
    }
    Ok(())
}

/// The scan of one script: where it stands (the frames of quotes and substitutions open),
/// and the rewritten text so far.
struct Scan<'a> {
    script: &'a str,
    bytes: &'a [u8],
    expressions: std::iter::Peekable<std::slice::Iter<'a, Occurrence>>,
    names: Names,
    out: String,
    stack: Vec<Frame>,
    /// Heredocs whose operator was read; their bodies start on the next line.
    pending: Vec<PendingHeredoc>,
    /// The delimiter of a heredoc whose body never ended.
    unterminated: Option<String>,
    /// Where a word continues after a `$( )`, `$(( ))` or backtick substitution closed: a
    /// `#` there does not start a comment.
    glued: usize,
}

impl<'a> Scan<'a> {
    fn frame(&self) -> Frame {
        *self.stack.last().unwrap_or(&Frame::Double)
    }

    /// Reads what stands at `i`; returns where the next read starts.
    fn step(&mut self, i: usize) -> Result<usize, ScriptError> {
        // An expression whose `$` was escaped (`\${{`) was copied as written.
        while self.expressions.next_if(|o| o.start < i).is_some() {}
        if let Some(occurrence) = self.expressions.next_if(|o| o.start == i) {
            return self.expression(occurrence);
        }
        let frame = self.frame();
        let c = self.bytes[i];
        let next = self.bytes.get(i + 1).copied();
        let handled = match frame {
            Frame::Single => {
                if c == b'\'' {
                    self.stack.pop();
                }
                None
            }
            Frame::Double => self.in_double(i, c, next),
            Frame::Arithmetic { .. } => self.in_arithmetic(i, c, next),
            Frame::Unquoted { .. } | Frame::Backtick | Frame::Test | Frame::Parameter => {
                self.in_unquoted(i, c, next, frame)?
            }
        };
        Ok(match handled {
            Some(after) => after,
            None => self.copy_char(i),
        })
    }

    /// Replaces the expression at `occurrence`, unless it stands in arithmetic.
    fn expression(&mut self, occurrence: &Occurrence) -> Result<usize, ScriptError> {
        if self
            .stack
            .iter()
            .any(|f| matches!(f, Frame::Arithmetic { .. } | Frame::Test | Frame::Parameter))
            || in_subscript(self.bytes, occurrence.start)
        {
            return Err(ScriptError {
                offset: occurrence.start,
                message: format!(
                    "`{}` stands in arithmetic (`$(( ))`, `(( ))`, `[[ ]]`, `${{ }}` or an array subscript), where a shell may evaluate a value as code: assign it to a variable and check it is a number first, or compare with `[ ]`",
                    &self.script[occurrence.start..occurrence.end]
                ),
            });
        }
        let frame = self.frame();
        self.out.push_str(&replacement(
            occurrence,
            &mut self.names,
            frame,
            self.script,
        ));
        Ok(occurrence.end)
    }

    /// Copies the character at `i` as it is.
    fn copy_char(&mut self, i: usize) -> usize {
        let width = self.script[i..].chars().next().map_or(1, char::len_utf8);
        self.out.push_str(&self.script[i..i + width]);
        i + width
    }

    /// Copies `text` (two bytes) at `i` and opens `frame`.
    fn open(&mut self, text: &str, frame: Frame, i: usize) -> usize {
        self.out.push_str(text);
        self.stack.push(frame);
        i + 2
    }

    /// Inside `"…"`: where the next read starts when `c` at `i` was handled, `None` when it
    /// is copied as it is.
    fn in_double(&mut self, i: usize, c: u8, next: Option<u8>) -> Option<usize> {
        match c {
            b'"' => {
                self.stack.pop();
                None
            }
            b'$' if next == Some(b'{') => Some(self.open("${", Frame::Parameter, i)),
            b'\\' => Some(copy_escaped(self.script, i, &mut self.out)),
            b'$' if next == Some(b'(') => Some(open_substitution(
                self.script,
                i,
                &mut self.stack,
                &mut self.out,
            )),
            b'`' => {
                self.stack.push(Frame::Backtick);
                None
            }
            _ => None,
        }
    }

    /// Inside `$(( ))` or `(( ))`, as [`Scan::in_double`].
    fn in_arithmetic(&mut self, i: usize, c: u8, next: Option<u8>) -> Option<usize> {
        match (c, self.stack.last_mut()) {
            (b'(', Some(Frame::Arithmetic { parens })) => {
                *parens += 1;
                None
            }
            (b')', Some(Frame::Arithmetic { parens })) if *parens > 0 => {
                *parens -= 1;
                None
            }
            (b')', _) => {
                // `))` ends it.
                self.stack.pop();
                if next != Some(b')') {
                    return None;
                }
                self.out.push_str("))");
                self.glued = i + 2;
                Some(i + 2)
            }
            _ => None,
        }
    }

    /// At the top level, inside `$( )`, backticks, `[[ ]]` or `${ }`, as
    /// [`Scan::in_double`].
    fn in_unquoted(
        &mut self,
        i: usize,
        c: u8,
        next: Option<u8>,
        frame: Frame,
    ) -> Result<Option<usize>, ScriptError> {
        let (script, bytes) = (self.script, self.bytes);
        let word = |text: &str| {
            script[i..].starts_with(text) && starts_word(bytes, i) && ends_word(bytes, i + 2)
        };
        Ok(match c {
            b'\\' => Some(copy_escaped(script, i, &mut self.out)),
            b'\'' => {
                self.stack.push(Frame::Single);
                None
            }
            b'"' => {
                self.stack.push(Frame::Double);
                None
            }
            b'`' if frame == Frame::Backtick => {
                self.stack.pop();
                self.glued = i + 1;
                None
            }
            b'`' => {
                self.stack.push(Frame::Backtick);
                None
            }
            b'$' if next == Some(b'(') => {
                Some(open_substitution(script, i, &mut self.stack, &mut self.out))
            }
            b'$' if next == Some(b'{') => Some(self.open("${", Frame::Parameter, i)),
            b'}' if frame == Frame::Parameter => {
                self.stack.pop();
                None
            }
            b'(' if next == Some(b'(') && starts_word(bytes, i) => {
                Some(self.open("((", Frame::Arithmetic { parens: 0 }, i))
            }
            b'[' if frame != Frame::Test && word("[[") => Some(self.open("[[", Frame::Test, i)),
            b']' if frame == Frame::Test && word("]]") => {
                self.out.push_str("]]");
                self.stack.pop();
                Some(i + 2)
            }
            b'c' if word_at(bytes, i, b"case") && at_command_start(bytes, i) => {
                if let Some(Frame::Unquoted { cases, .. }) = self.stack.last_mut() {
                    *cases += 1;
                }
                None
            }
            b'e' if word_at(bytes, i, b"esac") && at_command_start(bytes, i) => {
                if let Some(Frame::Unquoted { cases, .. }) = self.stack.last_mut() {
                    *cases = cases.saturating_sub(1);
                }
                None
            }
            b'(' => {
                if let Some(Frame::Unquoted { parens, .. }) = self.stack.last_mut() {
                    *parens += 1;
                }
                None
            }
            b')' => {
                self.close_paren(i);
                None
            }
            b'#' if starts_word(bytes, i) && i != self.glued => Some(self.comment(i)),
            b'<' if script[i..].starts_with("<<<") => {
                self.out.push_str("<<<");
                Some(i + 3)
            }
            b'<' if next == Some(b'<') => {
                let (heredoc, after) = heredoc_operator(script, i);
                self.out.push_str(&script[i..after]);
                self.pending.extend(heredoc);
                Some(after)
            }
            b'\n' if !self.pending.is_empty() => Some(self.heredoc_bodies(i)?),
            _ => None,
        })
    }

    /// A `)` outside quotes: it closes a `(`, ends a `case` pattern, or ends a `$( )`.
    fn close_paren(&mut self, i: usize) {
        match self.stack.last_mut() {
            Some(Frame::Unquoted { parens, .. }) if *parens > 0 => *parens -= 1,
            // The end of a `case` pattern.
            Some(Frame::Unquoted { cases, .. }) if *cases > 0 => {}
            Some(Frame::Unquoted {
                closes_on_paren: true,
                ..
            }) => {
                self.stack.pop();
                self.glued = i + 1;
            }
            _ => {}
        }
    }

    /// A comment runs to the end of the line; expressions in it are harmless but still
    /// rewritten, so the value never appears in the text.
    fn comment(&mut self, i: usize) -> usize {
        let end = self.script[i..]
            .find('\n')
            .map_or(self.script.len(), |n| i + n);
        copy_plain(
            self.script,
            i,
            end,
            &mut self.expressions,
            &mut self.names,
            &mut self.out,
        );
        end
    }

    /// The newline at `i` ends a line with heredoc operators: their bodies follow.
    fn heredoc_bodies(&mut self, i: usize) -> Result<usize, ScriptError> {
        self.out.push('\n');
        let mut i = i + 1;
        for heredoc in std::mem::take(&mut self.pending) {
            let (after, ended) = heredoc_body(
                self.script,
                i,
                &heredoc,
                &mut self.expressions,
                &mut self.names,
                &mut self.out,
            )?;
            if !ended {
                self.unterminated = Some(heredoc.delimiter.clone());
            }
            i = after;
        }
        Ok(i)
    }

    /// The rewritten script, or why the scan cannot tell how it quotes `first` (the first
    /// expression): something it opened is never closed.
    fn finish(self, first: &Occurrence) -> Result<ShellScript, ScriptError> {
        let balanced =
            self.stack.len() == 1 && self.pending.is_empty() && self.unterminated.is_none();
        if balanced {
            return Ok(ShellScript {
                text: self.out,
                variables: self.names.into_variables(),
            });
        }
        let what = match (self.stack.last(), &self.unterminated) {
            (_, Some(delimiter)) => format!("the heredoc ending with `{delimiter}` never ends"),
            (Some(Frame::Single), _) => "a single quote is never closed".to_string(),
            (Some(Frame::Double), _) => "a double quote is never closed".to_string(),
            (Some(Frame::Backtick), _) => "a backtick is never closed".to_string(),
            (Some(Frame::Arithmetic { .. }), _) => "a `$((` is never closed".to_string(),
            (Some(Frame::Test), _) => "a `[[` is never closed".to_string(),
            (Some(Frame::Parameter), _) => "a `${` is never closed".to_string(),
            _ if !self.pending.is_empty() => "a heredoc has no body".to_string(),
            _ => "a `$(` is never closed".to_string(),
        };
        Err(ScriptError {
            offset: first.start,
            message: format!(
                "Dropship cannot tell how this script quotes `{}`: {what} (as Dropship reads it); balance the quoting, or pass the value through `env:`",
                &self.script[first.start..first.end]
            ),
        })
    }
}

/// Copies the `$(` or `$((` at `i` and opens its frame; returns where it ends.
fn open_substitution(script: &str, i: usize, stack: &mut Vec<Frame>, out: &mut String) -> usize {
    if script[i..].starts_with("$((") {
        out.push_str("$((");
        stack.push(Frame::Arithmetic { parens: 0 });
        i + 3
    } else {
        out.push_str("$(");
        stack.push(Frame::unquoted(true));
        i + 2
    }
}

/// Copies a backslash and the character it escapes.
fn copy_escaped(script: &str, i: usize, out: &mut String) -> usize {
    let width = script[i + 1..].chars().next().map_or(0, char::len_utf8);
    out.push_str(&script[i..i + 1 + width]);
    i + 1 + width
}

/// Whether a word (a token) starts at `i`: at the start, or after a blank or an operator.
fn starts_word(bytes: &[u8], i: usize) -> bool {
    i == 0
        || matches!(
            bytes[i - 1],
            b' ' | b'\t' | b'\n' | b';' | b'&' | b'|' | b'(' | b')' | b'<' | b'>'
        )
}

/// Whether a word ends at `i` (before a blank, an operator or the end).
fn ends_word(bytes: &[u8], i: usize) -> bool {
    bytes.get(i).is_none_or(|c| {
        matches!(
            c,
            b' ' | b'\t' | b'\n' | b';' | b'&' | b'|' | b'(' | b')' | b'<' | b'>'
        )
    })
}

/// The first construct of `script` in which bash evaluates a variable's value as arithmetic
/// (and so runs a `$( )` inside it), if any: `((`, `$[`, `[[`, `let`, an integer declaration,
/// or `-v` in a test. A script that holds an expression may use none of them: however it
/// quotes the reference, bash would evaluate the value.
fn bash_arithmetic(script: &str) -> Option<&'static str> {
    if script.contains("((") {
        return Some("`((`");
    }
    if script.contains("$[") {
        return Some("`$[ ]`");
    }
    if script.contains("[[") {
        return Some("`[[ ]]`");
    }
    let words: Vec<&str> = script
        .split(|c: char| c.is_whitespace() || ";&|()`".contains(c))
        .filter(|w| !w.is_empty())
        .collect();
    for pair in words.windows(2) {
        let (word, next) = (pair[0], pair[1]);
        if matches!(
            word,
            "declare" | "typeset" | "local" | "readonly" | "export"
        ) && next.starts_with('-')
            && next.contains('i')
        {
            return Some("an integer declaration (`declare -i`)");
        }
        if matches!(word, "[" | "test") && next == "-v" {
            return Some("`-v` in a test");
        }
    }
    words.contains(&"let").then_some("`let`")
}

/// Whether `i` stands inside the brackets of an array subscript in its word (`a[...]`).
fn in_subscript(bytes: &[u8], i: usize) -> bool {
    let start = bytes[..i]
        .iter()
        .rposition(|c| matches!(c, b' ' | b'\t' | b'\n' | b';' | b'&' | b'|' | b'(' | b')'))
        .map_or(0, |p| p + 1);
    let word = &bytes[start..i];
    word.iter().rposition(|c| *c == b'[') > word.iter().rposition(|c| *c == b']')
}

/// Whether a command starts at `i`: at the start, after a newline or an operator, or after a
/// reserved word that a command follows.
fn at_command_start(bytes: &[u8], i: usize) -> bool {
    let before = &bytes[..i];
    let end = before
        .iter()
        .rposition(|c| *c != b' ' && *c != b'\t')
        .map_or(0, |p| p + 1);
    if end == 0 {
        return true;
    }
    if matches!(before[end - 1], b'\n' | b';' | b'&' | b'|' | b'(') {
        return true;
    }
    let word_start = before[..end]
        .iter()
        .rposition(|c| !c.is_ascii_alphabetic() && *c != b'!' && *c != b'{')
        .map_or(0, |p| p + 1);
    matches!(
        &before[word_start..end],
        b"then" | b"do" | b"else" | b"elif" | b"if" | b"while" | b"until" | b"!" | b"{"
    )
}

/// Whether the reserved word `word` stands at `i`.
fn word_at(bytes: &[u8], i: usize, word: &[u8]) -> bool {
    bytes[i..].starts_with(word) && starts_word(bytes, i) && ends_word(bytes, i + word.len())
}

/// Copies `script[from..to]`, rewriting expressions as in a double-quoted context.
fn copy_plain<'a>(
    script: &str,
    from: usize,
    to: usize,
    expressions: &mut std::iter::Peekable<std::slice::Iter<'a, Occurrence>>,
    names: &mut Names,
    out: &mut String,
) {
    let mut at = from;
    while let Some(occurrence) = expressions.next_if(|o| o.start < to) {
        if occurrence.start < at {
            continue;
        }
        out.push_str(&script[at..occurrence.start]);
        out.push_str(&replacement(occurrence, names, Frame::Double, script));
        at = occurrence.end;
    }
    if at < to {
        out.push_str(&script[at..to]);
    }
}

/// Reads `<<[-] WORD` at `i`; returns the heredoc (if a delimiter followed) and where the
/// operator and its word end.
fn heredoc_operator(script: &str, i: usize) -> (Option<PendingHeredoc>, usize) {
    let bytes = script.as_bytes();
    let mut at = i + 2;
    let strip_tabs = bytes.get(at) == Some(&b'-');
    if strip_tabs {
        at += 1;
    }
    while matches!(bytes.get(at), Some(b' ' | b'\t')) {
        at += 1;
    }
    let start = at;
    let mut quote: Option<u8> = None;
    while let Some(&c) = bytes.get(at) {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == b'\'' || c == b'"' => quote = Some(c),
            None if c.is_ascii_whitespace() || b";&|<>()".contains(&c) => break,
            None => {}
        }
        at += 1;
    }
    let word = &script[start..at];
    if word.is_empty() {
        return (None, at);
    }
    let quoted = word.contains(['\'', '"', '\\']);
    let delimiter: String = word
        .chars()
        .filter(|c| !matches!(c, '\'' | '"' | '\\'))
        .collect();
    (
        Some(PendingHeredoc {
            delimiter,
            quoted,
            strip_tabs,
        }),
        at,
    )
}

/// Copies one heredoc body starting at `i` (the start of a line) through its delimiter line;
/// returns where it ended, and whether its delimiter was found.
fn heredoc_body<'a>(
    script: &str,
    mut i: usize,
    heredoc: &PendingHeredoc,
    expressions: &mut std::iter::Peekable<std::slice::Iter<'a, Occurrence>>,
    names: &mut Names,
    out: &mut String,
) -> Result<(usize, bool), ScriptError> {
    while i < script.len() {
        let end = script[i..].find('\n').map_or(script.len(), |n| i + n);
        let line = &script[i..end];
        let bare = if heredoc.strip_tabs {
            line.trim_start_matches('\t')
        } else {
            line
        };
        let next = (end + 1).min(script.len());
        if bare == heredoc.delimiter {
            out.push_str(&script[i..next]);
            return Ok((next, true));
        }
        if heredoc.quoted {
            if let Some(occurrence) = expressions.peek().filter(|o| o.start < end) {
                return Err(ScriptError {
                    offset: occurrence.start,
                    message: format!(
                        "`{}` stands in a quoted heredoc (<<'{}'), which expands nothing: use an unquoted heredoc (<<{}) or the variable's name",
                        &script[occurrence.start..occurrence.end],
                        heredoc.delimiter,
                        heredoc.delimiter
                    ),
                });
            }
            out.push_str(&script[i..next]);
        } else {
            // An unquoted body expands `${ }` too: no expression inside one, or in a subscript.
            let line = &script[i..next];
            for occurrence in occurrences(line) {
                let before = &line[..occurrence.start];
                let open = before.matches("${").count() > before.matches('}').count();
                if open || in_subscript(line.as_bytes(), occurrence.start) {
                    return Err(ScriptError {
                        offset: i + occurrence.start,
                        message: format!(
                            "`{}` stands inside `${{ }}` or an array subscript in a heredoc, where bash evaluates values as arithmetic: pass the value through `env:`",
                            &line[occurrence.start..occurrence.end]
                        ),
                    });
                }
            }
            copy_plain(script, i, next, expressions, names, out);
        }
        i = next;
    }
    Ok((i, false))
}

fn replacement(occurrence: &Occurrence, names: &mut Names, frame: Frame, script: &str) -> String {
    let Ok(reference) = parse_reference(&occurrence.inner) else {
        return script[occurrence.start..occurrence.end].to_string();
    };
    let name = names.name_for(reference);
    match frame {
        Frame::Unquoted { .. }
        | Frame::Backtick
        | Frame::Test
        | Frame::Arithmetic { .. }
        | Frame::Parameter => {
            format!("\"${{{name}}}\"")
        }
        Frame::Double => format!("${{{name}}}"),
        Frame::Single => format!("'\"${{{name}}}\"'"),
    }
}

/// Variable names for references: the `DROPSHIP_*` name of each, made unique.
#[derive(Debug, Default)]
struct Names {
    by_name: BTreeMap<String, Reference>,
    order: Vec<String>,
}

impl Names {
    fn name_for(&mut self, reference: Reference) -> String {
        let base = reference.variable_name();
        let mut name = base.clone();
        let mut n = 1;
        loop {
            match self.by_name.get(&name) {
                Some(existing) if *existing == reference => return name,
                Some(_) => {
                    n += 1;
                    name = format!("{base}_{n}");
                }
                None => {
                    self.by_name.insert(name.clone(), reference);
                    self.order.push(name.clone());
                    return name;
                }
            }
        }
    }

    fn into_variables(mut self) -> Vec<(String, Reference)> {
        self.order
            .into_iter()
            .filter_map(|name| self.by_name.remove(&name).map(|r| (name, r)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(script: &str, expected: &str) {
        let rewritten = rewrite(script).unwrap();
        assert_eq!(rewritten.text, expected, "{script}");
    }

    #[test]
    fn each_quoting_context_gets_a_reference_it_expands_as_data() {
        check("echo ${{ deployment.ref }}", r#"echo "${DROPSHIP_REF}""#);
        check(
            r#"echo "ref is ${{ deployment.ref }}""#,
            r#"echo "ref is ${DROPSHIP_REF}""#,
        );
        check(
            "echo 'ref is ${{ deployment.ref }}'",
            r#"echo 'ref is '"${DROPSHIP_REF}"''"#,
        );
        check(
            "cat <<EOF\nref ${{ deployment.ref }}\nEOF\necho ${{deployment.sha}}",
            "cat <<EOF\nref ${DROPSHIP_REF}\nEOF\necho \"${DROPSHIP_SHA}\"",
        );
        check(
            "x=$(echo \"${{ deployment.payload.a-b.c }}\" | tr a b)",
            "x=$(echo \"${DROPSHIP_PAYLOAD_A_B__C}\" | tr a b)",
        );
        check(
            "echo \"$(echo ${{ deployment.ref }})\"",
            "echo \"$(echo \"${DROPSHIP_REF}\")\"",
        );
        check(
            "echo `echo ${{ deployment.ref }}`",
            "echo `echo \"${DROPSHIP_REF}\"`",
        );
        check(
            "# deploys ${{ deployment.ref }} it's fine\necho ${{ deployment.ref }}",
            "# deploys ${DROPSHIP_REF} it's fine\necho \"${DROPSHIP_REF}\"",
        );
        check(
            "echo \\'${{ deployment.ref }}",
            "echo \\'\"${DROPSHIP_REF}\"",
        );
    }

    #[test]
    fn constructs_that_used_to_mislead_the_scan() {
        // A comment right after a subshell's `)`: its apostrophe opens nothing.
        check(
            "(cd /srv)# don't fail\nfind . -name \"${{ deployment.ref }}\"",
            "(cd /srv)# don't fail\nfind . -name \"${DROPSHIP_REF}\"",
        );
        // `#` right after a substitution continues the word: no comment.
        check(
            "echo $(date)#'\necho ${{ deployment.ref }}'",
            "echo $(date)#'\necho '\"${DROPSHIP_REF}\"''",
        );
        // `case` as an argument is just a word.
        check(
            "echo \"$(echo case)\"\necho ${{ deployment.ref }}",
            "echo \"$(echo case)\"\necho \"${DROPSHIP_REF}\"",
        );
        // A `case` pattern's `)` inside `$( )` closes nothing.
        check(
            "x=$(case a in a) echo ${{ deployment.ref }};; esac)\necho \"${{ deployment.sha }}\"",
            "x=$(case a in a) echo \"${DROPSHIP_REF}\";; esac)\necho \"${DROPSHIP_SHA}\"",
        );
        // A here-string is not a heredoc.
        check(
            "cat <<< x\necho ${{ deployment.ref }}",
            "cat <<< x\necho \"${DROPSHIP_REF}\"",
        );
        // `[ ]` compares strings.
        check(
            "[ \"${{ deployment.ref }}\" = main ] && echo ok",
            "[ \"${DROPSHIP_REF}\" = main ] && echo ok",
        );
    }

    #[test]
    fn arithmetic_and_unbalanced_scripts_are_refused() {
        for script in [
            "echo $(( ${{ deployment.payload.n }} + 1 ))",
            "echo \"$(( ${{ deployment.payload.n }} + 1 ))\"",
            "(( ${{ deployment.payload.n }} > 1 )) && echo big",
            "[[ \"${{ deployment.payload.n }}\" -eq 1 ]] && echo one",
            "for((i=0;i<${{ deployment.payload.n }};i++)); do :; done",
            "if((\"${{ deployment.payload.n }}\" > 1)); then :; fi",
            "echo \"$(echo case)\"\n(( ${{ deployment.payload.n }} > 1 ))\necho \" esac )\"",
            "echo $(date)#; (( ${{ deployment.payload.n }} > 1 ))",
            "cat <<EOF\n$(( ${{ deployment.payload.n }} + 1 ))\nEOF",
            "echo $[ ${{ deployment.payload.n }} ]",
            "let \"n=${{ deployment.payload.n }}\"",
            "declare -i n; n=${{ deployment.payload.n }}",
            "[ -v \"${{ deployment.payload.n }}\" ]",
            "echo \"${arr[${{ deployment.payload.n }}]}\"",
            "echo ${s:${{ deployment.payload.n }}}",
            "a[${{ deployment.payload.n }}]=1",
            "cat <<EOF\n${arr[${{ deployment.payload.n }}]}\nEOF",
            // Even a default value: inside `${ }` Dropship does not tell offsets from words.
            "echo \"${X:-${{ deployment.ref }}}\"",
        ] {
            let error = rewrite(script).unwrap_err();
            assert!(
                error.message.contains("arithmetic"),
                "{script}: {}",
                error.message
            );
        }
        for (script, what) in [
            (
                "echo 'it\necho ${{ deployment.ref }}",
                "a single quote is never closed",
            ),
            (
                "echo \"${{ deployment.ref }}",
                "a double quote is never closed",
            ),
            ("x=$(echo ${{ deployment.ref }}", "a `$(` is never closed"),
            (
                "cat <<EOF\n${{ deployment.ref }}\n",
                "the heredoc ending with `EOF` never ends",
            ),
        ] {
            let error = rewrite(script).unwrap_err();
            assert!(error.message.contains(what), "{script}: {}", error.message);
        }
        // Without expressions there is nothing to protect: no refusal.
        assert!(rewrite("echo 'unbalanced").is_ok());
    }

    #[test]
    fn ansi_c_quoting_is_refused_in_a_script_with_an_expression() {
        // In `$'…'`, `\'` does not close the string: read as POSIX quoting, the scan would
        // put the expression outside `${ }` and the arithmetic offset it stands in.
        for script in [
            "echo $'\\'' ${s:${{ deployment.payload.n }}} #'",
            "echo $'a\\'b' \"${{ deployment.ref }}\"",
            "echo ${{ deployment.ref }}; printf $'\\n'",
        ] {
            let error = rewrite(script).unwrap_err();
            assert!(
                error.message.contains("`$'…'` quoting cannot be followed"),
                "{script}: {}",
                error.message
            );
            assert_eq!(error.offset, script.find("${{").unwrap(), "{script}");
        }
        // Without an expression there is nothing to protect.
        assert!(rewrite("printf $'a\\'b\\n'").is_ok());
    }

    #[test]
    fn scripts_without_expressions_come_back_as_written() {
        for script in [
            "echo 'unbalanced",
            "echo $(( 1 + 2 )) \"$x\" ${y:-z} `date` # it's\ncat <<'EOF'\n$a\nEOF\n",
            "x=$(case a in a) echo;; esac\n[[ -n $1 ]]\necho \\$x",
            "",
        ] {
            let rewritten = rewrite(script).unwrap();
            assert_eq!(rewritten.text, script);
            assert!(rewritten.variables.is_empty());
        }
    }

    #[test]
    fn payload_names_that_collide_are_made_unique() {
        let rewritten =
            rewrite("echo ${{ deployment.payload.a-b }} ${{ deployment.payload.a_b }}").unwrap();
        assert_eq!(
            rewritten.text,
            r#"echo "${DROPSHIP_PAYLOAD_A_B}" "${DROPSHIP_PAYLOAD_A_B_2}""#
        );
        assert_eq!(rewritten.variables.len(), 2);
    }

    #[test]
    fn a_quoted_heredoc_refuses_expressions() {
        let error = rewrite("cat <<'EOF'\n${{ deployment.ref }}\nEOF\n").unwrap_err();
        assert_eq!(error.offset, 12);
        assert!(
            error.message.contains("quoted heredoc"),
            "{}",
            error.message
        );
        // The same body after the heredoc ends is fine.
        assert!(rewrite("cat <<'EOF'\nplain\nEOF\necho ${{ deployment.ref }}\n").is_ok());
        assert!(rewrite("cat <<-\"EOF\"\n\t$x\n\tEOF\necho ${{ deployment.ref }}\n").is_ok());
    }

    #[test]
    fn the_text_never_depends_on_a_value() {
        let script =
            "echo \"${{ deployment.ref }}\" '${{ deployment.payload.x }}' ${{ repo.name }}";
        let rewritten = rewrite(script).unwrap();
        assert!(!rewritten.text.contains("${{"));
        assert_eq!(
            rewritten
                .variables
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>(),
            ["DROPSHIP_REF", "DROPSHIP_PAYLOAD_X", "DROPSHIP_REPO_NAME"]
        );
    }
}
