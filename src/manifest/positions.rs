//! Where each key and value of a YAML document stands, by path (`tasks.deploy[0].on`), so that
//! errors found after deserialization still point at a line and column.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// How deep a document may nest mappings and sequences. Deeper ones are refused before they
/// are deserialized: recursive parsers would exhaust the stack, and serde_yaml's time grows
/// with the square of flow nesting.
pub(crate) const MAX_DEPTH: usize = 64;

#[derive(Debug, Default, Clone)]
pub(crate) struct Positions {
    keys: HashMap<String, Position>,
    values: HashMap<String, Position>,
    /// Where the document first nests deeper than [`MAX_DEPTH`], if it does.
    pub(crate) too_deep: Option<Position>,
}

impl Positions {
    /// Indexes `text`; a document that does not parse yields an empty index (serde reports
    /// the syntax error with its own position).
    pub(crate) fn index(text: &str) -> Positions {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        // Event by event (`Parser::load` recurses once per level), and no deeper than
        // MAX_DEPTH.
        while let Ok((event, mark)) = parser.next_token() {
            let end = matches!(event, Event::DocumentEnd | Event::StreamEnd);
            builder.on_event(event, mark);
            if builder.stack.len() > MAX_DEPTH {
                builder.positions.too_deep = Some(position(mark));
                break;
            }
            if end {
                break;
            }
        }
        builder.positions
    }

    /// The position of the key at `path` (falling back to its value).
    pub(crate) fn key(&self, path: &str) -> Option<Position> {
        self.keys
            .get(path)
            .or_else(|| self.values.get(path))
            .copied()
    }

    /// The position of the value at `path` (falling back to its key).
    pub(crate) fn value(&self, path: &str) -> Option<Position> {
        self.values
            .get(path)
            .or_else(|| self.keys.get(path))
            .copied()
    }
}

enum Frame {
    Mapping { path: String, key: Option<String> },
    Sequence { path: String, index: usize },
}

#[derive(Default)]
struct Builder {
    positions: Positions,
    stack: Vec<Frame>,
}

fn position(mark: Marker) -> Position {
    Position {
        line: mark.line(),
        column: mark.col() + 1,
    }
}

impl Builder {
    /// The path of the node about to be read, or `None` when it is a mapping key.
    fn next_value_path(&self) -> Option<String> {
        match self.stack.last() {
            None => Some(String::new()),
            Some(Frame::Mapping { key: None, .. }) => None,
            Some(Frame::Mapping {
                path,
                key: Some(key),
            }) => Some(join(path, key)),
            Some(Frame::Sequence { path, index }) => Some(format!("{path}[{index}]")),
        }
    }

    /// A value node has been read completely: advance the parent.
    fn finish_value(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Mapping { key, .. }) => *key = None,
            Some(Frame::Sequence { index, .. }) => *index += 1,
            None => {}
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::Scalar(text, ..) => match self.next_value_path() {
                None => {
                    if let Some(Frame::Mapping { path, key }) = self.stack.last_mut() {
                        let full = join(path, &text);
                        self.positions.keys.insert(full, position(mark));
                        *key = Some(text);
                    }
                }
                Some(path) => {
                    self.positions.values.insert(path, position(mark));
                    self.finish_value();
                }
            },
            Event::Alias(_) => {
                if let Some(path) = self.next_value_path() {
                    self.positions.values.insert(path, position(mark));
                }
                self.finish_value();
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                // A complex key (a mapping used as a key) is not something a manifest has;
                // index it under an empty name so the walk stays balanced.
                let path = self.next_value_path().unwrap_or_default();
                self.positions.values.insert(path.clone(), position(mark));
                let frame = match event {
                    Event::MappingStart(..) => Frame::Mapping { path, key: None },
                    _ => Frame::Sequence { path, index: 0 },
                };
                self.stack.push(frame);
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.finish_value();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_by_path() {
        let text = "version: 1\nenvironments:\n  production:\n    servers: [web-1, web]\ntasks:\n  deploy:\n    - name: a\n      run: |\n        echo hi\n";
        let p = Positions::index(text);
        assert_eq!(
            p.key("environments.production"),
            Some(Position { line: 3, column: 3 })
        );
        assert_eq!(
            p.value("environments.production.servers[1]"),
            Some(Position {
                line: 4,
                column: 22
            })
        );
        assert_eq!(
            p.key("tasks.deploy[0].run"),
            Some(Position { line: 8, column: 7 })
        );
        assert_eq!(
            p.value("tasks.deploy[0].name"),
            Some(Position {
                line: 7,
                column: 13
            })
        );
    }
}
