//! Text kindnetd prints that holds names from outside (nodes, pods,
//! policies, namespaces: the API server or the nodes file choose them):
//! one escaping rule for `/readyz`, the log and `kindnetd doctor`, so a
//! crafted name can neither break a line nor forge one (`[pass] …`), and
//! a size cap for lists that grow with the cluster.

use std::borrow::Cow;
use std::io::Write;

/// Whether `c` is shown escaped: control characters (C0, DEL, C1), the
/// line and paragraph separators, and the bidirectional controls that
/// reorder what a terminal shows.
fn escaped(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
        )
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// `s` with every control character written as an escape (`\n`, `\t`,
/// `\u{1b}`), on one line; unchanged (not copied) when there is none.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(escaped) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if escaped(c) {
            match c {
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// The longest line kept whole; longer ones end in "…".
pub const MAX_LINE: usize = 1024;
/// The most entries of one list shown; then "… and N more".
pub const MAX_ENTRIES: usize = 100;

/// One line: escaped, and cut at [`MAX_LINE`] bytes (on a character
/// boundary) with "…".
pub fn line(s: &str) -> String {
    let e = escape(s);
    if e.len() <= MAX_LINE {
        return e.into_owned();
    }
    let mut end = MAX_LINE;
    while !e.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &e[..end])
}

/// Up to [`MAX_ENTRIES`] of `items` as [`line()`]s, then "… and N more".
pub fn capped<S: AsRef<str>>(items: &[S]) -> Vec<String> {
    let mut out: Vec<String> = items
        .iter()
        .take(MAX_ENTRIES)
        .map(|i| line(i.as_ref()))
        .collect();
    if items.len() > MAX_ENTRIES {
        out.push(format!("… and {} more", items.len() - MAX_ENTRIES));
    }
    out
}

/// `items` joined with ", ", at most [`MAX_ENTRIES`] of them, escaped.
pub fn capped_list<S: AsRef<str>>(items: &[S]) -> String {
    let mut v: Vec<String> = items
        .iter()
        .take(MAX_ENTRIES)
        .map(|i| escape(i.as_ref()).into_owned())
        .collect();
    if items.len() > MAX_ENTRIES {
        v.push(format!("… and {} more", items.len() - MAX_ENTRIES));
    }
    line(&v.join(", "))
}

/// A log writer: each event (one write of the formatter, ending in a
/// newline) goes out on one line, its control characters escaped.
pub struct EscapingWriter<W: Write>(pub W);

impl<W: Write> Write for EscapingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let (body, nl) = match text.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (text.as_ref(), ""),
        };
        let mut out = escape(body).into_owned();
        out.push_str(nl);
        self.0.write_all(out.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Standard error through an [`EscapingWriter`], for the log.
pub fn stderr() -> EscapingWriter<std::io::Stderr> {
    EscapingWriter(std::io::stderr())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_on_one_line() {
        assert!(matches!(escape("node-1.example"), Cow::Borrowed(_)));
        assert_eq!(escape("a\nb"), "a\\nb");
        assert_eq!(escape("x\r\n[pass] forged"), "x\\r\\n[pass] forged");
        assert_eq!(escape("\u{1b}[2Jc"), "\\u{1b}[2Jc");
        assert_eq!(escape("a\u{85}b\u{7f}"), "a\\u{85}b\\u{7f}");
        assert_eq!(escape("a\u{2028}b\u{202e}c"), "a\\u{2028}b\\u{202e}c");
        assert_eq!(escape("tab\there"), "tab\\there");
        assert_eq!(escape("ü-ñ"), "ü-ñ");
        for s in ["a\nb", "\u{1b}x", "a\u{2029}", "\u{9b}31m"] {
            assert!(!escape(s).chars().any(escaped), "{s:?}");
        }
    }

    #[test]
    fn lists_and_lines_are_capped() {
        let many: Vec<String> = (0..250).map(|i| format!("p{i}")).collect();
        let v = capped(&many);
        assert_eq!(v.len(), MAX_ENTRIES + 1);
        assert_eq!(v.last().unwrap(), "… and 150 more");
        assert!(capped_list(&many).ends_with(", … and 150 more"));
        let long = "é".repeat(2000);
        let l = line(&long);
        assert!(l.len() <= MAX_LINE + "…".len() && l.ends_with('…'));
        assert_eq!(capped(&["a\nb"]), ["a\\nb"]);
    }

    #[test]
    fn the_log_writer_keeps_one_event_on_one_line() {
        let mut w = EscapingWriter(Vec::new());
        w.write_all(b"WARN refused: policy x/a\n[pass] forged\n")
            .unwrap();
        w.write_all(b"INFO next\n").unwrap();
        let out = String::from_utf8(w.0).unwrap();
        assert_eq!(out, "WARN refused: policy x/a\\n[pass] forged\nINFO next\n");
    }
}
